"""The client certificate of the current request, as the TLS layer verified it."""

from __future__ import annotations

import functools

from cryptography import x509
from starlette.requests import HTTPConnection

from cmglab.pki.builders import sha1_thumbprint


def client_cert(conn: HTTPConnection) -> x509.Certificate | None:
    tls = conn.scope.get("extensions", {}).get("tls")
    if not tls or not tls.get("client_cert_der"):
        return None
    return parsed(tls["client_cert_der"])


@functools.lru_cache(maxsize=1024)
def parsed(der: bytes) -> x509.Certificate:
    """One parse per certificate among the latest 1,024 (a connection's requests share its DER object, whose hash
    Python keeps): not a parsed copy kept by each idle keep-alive connection (issue 20)."""
    return x509.load_der_x509_certificate(der)


def thumbprint(cert: x509.Certificate) -> str:
    return sha1_thumbprint(cert)


def subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def describe(cert: x509.Certificate) -> dict[str, str]:
    return {
        "subject": subject(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "thumbprint": thumbprint(cert),
    }
