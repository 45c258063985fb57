"""How big a certificate or public key a client may hand a service to verify and store (issue 15).

Every certificate and key the lab's clients present is small (an SMS certificate is under 1 KiB, device and
transport keys are RSA 2048); an attacker's 5 MB certificate or 16384-bit key costs the service CPU to
verify and grows its database with every request. Services refuse anything beyond these before storing it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

MAX_CERT_BYTES = 16 * 1024  # DER
MAX_RSA_BITS = 4096


class TooLarge(ValueError):
    pass


def check_key(key: object, what: str) -> None:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size > MAX_RSA_BITS:
        raise TooLarge(f"{what} has an RSA key of {key.key_size} bits (at most {MAX_RSA_BITS})")


def load_der_cert(der: bytes, what: str) -> x509.Certificate:
    """A DER certificate of at most MAX_CERT_BYTES with a key of at most MAX_RSA_BITS (TooLarge, a ValueError)."""
    if len(der) > MAX_CERT_BYTES:
        raise TooLarge(f"{what} is {len(der)} bytes (at most {MAX_CERT_BYTES})")
    cert = x509.load_der_x509_certificate(der)
    check_key(cert.public_key(), what)
    return cert


def load_hex_cert(hex_der: str, what: str) -> x509.Certificate:
    if len(hex_der) > 2 * MAX_CERT_BYTES + 16:  # before decoding: the hex text itself is what is buffered
        raise TooLarge(f"{what} is over {MAX_CERT_BYTES} bytes")
    return load_der_cert(bytes.fromhex(hex_der.strip()), what)
