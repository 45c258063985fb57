"""X.509 building blocks (cryptography): keys, CA and leaf certificates, CRLs, thumbprints."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# ConfigMgr's self-signed client certificates ("SMS Signing" / "SMS Encryption") carry these EKUs.
SMS_SIGNING_EKU = x509.ObjectIdentifier("1.3.6.1.4.1.311.101.2")
SMS_EKU = x509.ObjectIdentifier("1.3.6.1.4.1.311.101")

RSAKey = rsa.RSAPrivateKey


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_key(bits: int = 2048) -> RSAKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_pem(key: RSAKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def sha1_thumbprint(cert: x509.Certificate) -> str:
    """Upper-case hex SHA-1 of the DER certificate, as Windows and ConfigMgr show it."""
    return der_thumbprint(cert_der(cert))


def der_thumbprint(der: bytes) -> str:
    """`sha1_thumbprint` of a certificate already DER-encoded."""
    return hashlib.sha1(der).hexdigest().upper()


def x5t(cert: x509.Certificate) -> str:
    """base64url(SHA-1(DER)) without padding: Entra's `kid`/`x5t` and the site tokens' `x5t`."""
    return base64.urlsafe_b64encode(hashlib.sha1(cert_der(cert)).digest()).rstrip(b"=").decode()


def name(common_name: str, *extra: x509.NameAttribute) -> x509.Name:
    return x509.Name([*extra, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def general_names(identities: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for ident in identities:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(ident)))
        except ValueError:
            out.append(x509.DNSName(ident))
    return out


def _base(subject: x509.Name, issuer: x509.Name, public_key, not_before: datetime, days: int):  # type: ignore[no-untyped-def]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _distribution(cdp: str | None, aia: str | None):  # type: ignore[no-untyped-def]
    exts: list[x509.ExtensionType] = []
    if cdp:
        exts.append(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(cdp)], None, None, None)]
            )
        )
    if aia:
        exts.append(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(aia)
                    )
                ]
            )
        )
    return exts


def _key_usage(
    *, cert_sign: bool = False, key_encipherment: bool = False, data_encipherment: bool = False
) -> x509.KeyUsage:
    """Digital signature always; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=data_encipherment,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca(
    subject: x509.Name, issuer: x509.Name, public_key: rsa.RSAPublicKey, days: int, path_length: int | None
) -> x509.CertificateBuilder:
    """What every CA certificate of the lab has: basic constraints (a CA) and key usage (signs certificates, CRLs)."""
    return (
        _base(subject, issuer, public_key, utcnow() - timedelta(minutes=5), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )


def self_signed_ca(
    key: RSAKey, subject: x509.Name, *, days: int = 3650, path_length: int | None = None
) -> x509.Certificate:
    return _ca(subject, subject, key.public_key(), days, path_length).sign(key, hashes.SHA256())


def sub_ca(
    key: RSAKey,
    subject: x509.Name,
    issuer_cert: x509.Certificate,
    issuer_key: RSAKey,
    *,
    days: int = 1825,
    cdp: str | None = None,
    aia: str | None = None,
) -> x509.Certificate:
    builder = _ca(subject, issuer_cert.subject, key.public_key(), days, 0).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
    )
    for ext in _distribution(cdp, aia):
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_constants(
    issuer_key: RSAKey, ekus: Sequence[x509.ObjectIdentifier], key_encipherment: bool
) -> list[x509.Extension[x509.ExtensionType]]:
    """A leaf's extensions that depend only on its issuer and its kind, in `leaf`'s order (after the subject key
    identifier): basic constraints and key usage (critical), the EKUs, the authority key identifier."""
    return [
        x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)),
        x509.Extension(x509.KeyUsage.oid, True, _key_usage(key_encipherment=key_encipherment)),
        x509.Extension(x509.ExtendedKeyUsage.oid, False, x509.ExtendedKeyUsage(list(ekus))),
        x509.Extension(
            x509.AuthorityKeyIdentifier.oid,
            False,
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
        ),
    ]


def leaf(  # type: ignore[no-untyped-def]
    public_key,
    subject: x509.Name,
    issuer_cert: x509.Certificate,
    issuer_key: RSAKey,
    *,
    ekus: Sequence[x509.ObjectIdentifier],
    san: Sequence[str] = (),
    days: int = 825,
    cdp: str | None = None,
    aia: str | None = None,
    extra: Sequence[x509.ExtensionType] = (),
    not_before: datetime | None = None,
    key_encipherment: bool = True,
) -> x509.Certificate:
    start = not_before or (utcnow() - timedelta(minutes=5))
    builder = _base(subject, issuer_cert.subject, public_key, start, days)
    for constant in _leaf_constants(issuer_key, ekus, key_encipherment):
        builder = builder.add_extension(constant.value, critical=constant.critical)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names(san)), critical=False)
    for ext in [*_distribution(cdp, aia), *extra]:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class LeafIssuer:
    """`leaf` for many certificates of one issuer with the same EKUs and lifetime (the DRS's device certificates):
    the issuer's name, the constant extensions and the authority key identifier (a hash of the issuer's public key)
    made once, and the builder given its extensions in one list instead of one copy per `add_extension` (~0.05-0.1
    ms of CPU less per certificate). The certificate is the one `leaf` makes (no SAN, CDP or AIA)."""

    def __init__(
        self, issuer_cert: x509.Certificate, issuer_key: RSAKey, *, ekus: Sequence[x509.ObjectIdentifier], days: int
    ) -> None:
        self.issuer_name, self.issuer_key, self.validity = issuer_cert.subject, issuer_key, timedelta(days=days)
        self.constant = _leaf_constants(issuer_key, ekus, key_encipherment=True)

    def issue(self, public_key, subject: x509.Name, extra: Sequence[x509.ExtensionType] = ()) -> x509.Certificate:  # type: ignore[no-untyped-def]
        start = utcnow() - timedelta(minutes=5)
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        extensions = [x509.Extension(ski.oid, False, ski), *self.constant]
        extensions += [x509.Extension(ext.oid, False, ext) for ext in extra]
        builder = x509.CertificateBuilder(
            self.issuer_name, subject, public_key, x509.random_serial_number(), start, start + self.validity, extensions
        )
        return builder.sign(self.issuer_key, hashes.SHA256())


def self_signed(
    key: RSAKey,
    subject: x509.Name,
    *,
    ekus: Sequence[x509.ObjectIdentifier],
    days: int = 1825,
    data_encipherment: bool = False,
) -> x509.Certificate:
    """A self-signed end-entity certificate (token signing, SMS signing/encryption)."""
    now = utcnow() - timedelta(minutes=5)
    builder = _base(subject, subject, key.public_key(), now, days).add_extension(
        _key_usage(key_encipherment=data_encipherment, data_encipherment=data_encipherment), critical=False
    )
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    return builder.sign(key, hashes.SHA256())


def build_crl(
    issuer_cert: x509.Certificate,
    issuer_key: RSAKey,
    revoked: Iterable[tuple[int, datetime]],
    *,
    number: int,
    last_update: datetime,
    days: int = 30,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(last_update)
        .next_update(last_update + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(issuer_key, hashes.SHA256())


SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
