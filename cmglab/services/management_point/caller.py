"""Who sent a request, as the transport established it (no HTTP here: routes fill it in)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509

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
