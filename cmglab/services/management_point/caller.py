"""Who sent a request, as the transport established it (no HTTP here: routes fill it in)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from cmglab.runtime.certinfo import subject, thumbprint
from cmglab.wire import key_limits
from cmglab.wire.kinds import AuthKind, EntraVerdict


@dataclass
class Caller:
    vdir: str = "ccm_system"  # ccm_system | ccm_system_windowsauth | ccm_system_altauth | ccm_system_tokenauth
    scheme: str = "http"
    host: str = ""  # the Host the client addressed (without port)
    pki_cert: x509.Certificate | None = None  # PKI client cert: TLS, or Client-Cert from a connection point
    via_connection_point: bool = False  # the request came through the CMG and a connection point
    domain_account: str | None = None  # CORP\NAME$ after Windows authentication
    ccm_claims: dict[str, Any] | None = None  # a verified CCM token (Authorization: Bearer)
    # an Entra token instead (registration only): the verdict on it (admission.ENTRA_*) and, when valid, its claims
    entra_verdict: EntraVerdict | None = None
    entra_claims: dict[str, Any] | None = None

    @property
    def internet(self) -> bool:
        return self.via_connection_point

    @property
    def auth_kind(self) -> AuthKind:
        if self.ccm_claims is not None:
            return AuthKind.CCM_TOKEN
        if self.entra_claims is not None:
            return AuthKind.ENTRA_TOKEN
        if self.domain_account:
            return AuthKind.WINDOWS
        if self.pki_cert is not None:
            return AuthKind.PKI_CERTIFICATE
        return AuthKind.ANONYMOUS


# What the MP reads of a client certificate, worked out once per certificate among the latest 1,024 (a keep-alive
# connection's requests share one parsed certificate, and a certificate equals another with the same DER): every
# request of a PKI client, and every registration or proof with the client's own certificate, asked again.
@functools.lru_cache(maxsize=1024)
def cert_subject(cert: x509.Certificate) -> str:
    """The certificate's subject as RFC 4514 text."""
    return subject(cert)


@functools.lru_cache(maxsize=1024)
def cert_thumbprint(cert: x509.Certificate) -> str:
    """The certificate's SHA-1 thumbprint (hex, upper case)."""
    return thumbprint(cert)


@functools.lru_cache(maxsize=256)
def cert_from_hex(hex_der: str, what: str) -> x509.Certificate:
    """`key_limits.load_hex_cert` once per certificate text among the latest 256 (a registration carries its
    signing certificate twice, a client sends the same one with each proof): only a certificate within the limits
    is kept, a refusal raises each time."""
    return key_limits.load_hex_cert(hex_der, what)
