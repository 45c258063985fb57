"""Device registration crypto (docs/protocol-notes.md, Entra §3.2–3.4): the CSR, the transport key, the
hybrid join's signed SID, and device certificates from the MS-Organization-Access CA.

Pure functions and one small CA class; every check raises `DRSError` before anything is written.
"""

from __future__ import annotations

import base64
import binascii
import struct
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from cmglab.pki import builders as b
from cmglab.services.entra.errors import DRSError
from cmglab.wire import jsonlimits, key_limits

# 1.2.840.113556.1.5.284.*: the private extensions of Entra device certificates
OID_DEVICE_ID = x509.ObjectIdentifier("1.2.840.113556.1.5.284.2")
OID_USER_ID = x509.ObjectIdentifier("1.2.840.113556.1.5.284.3")
OID_TENANT_ID = x509.ObjectIdentifier("1.2.840.113556.1.5.284.5")
OID_JOIN_TYPE = x509.ObjectIdentifier("1.2.840.113556.1.5.284.7")
OID_REGION = x509.ObjectIdentifier("1.2.840.113556.1.5.284.8")
DEVICE_CERT_DAYS = 3650
SID_SKEW = timedelta(minutes=10)  # how old a hybrid join's signed SID timestamp may be
MIN_RSA_BITS = 2048


def _invalid(message: str, code: int = 90014) -> DRSError:
    return DRSError(400, "InvalidParameter", code, message)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _invalid(f"{what} is not valid base64.") from e


def check_csr(data_b64: str) -> rsa.RSAPublicKey:
    """The device key from a PKCS#10 request whose signature verifies with that key."""
    try:
        if len(data_b64) > 2 * key_limits.MAX_CERT_BYTES:
            raise _invalid(f"CertificateRequest.Data is over {key_limits.MAX_CERT_BYTES} bytes.")
        csr = x509.load_der_x509_csr(_b64(data_b64, "CertificateRequest.Data"))
    except ValueError as e:
        raise _invalid("CertificateRequest.Data is not a DER PKCS#10 certificate request.") from e
    key = csr.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or not MIN_RSA_BITS <= key.key_size <= key_limits.MAX_RSA_BITS:
        raise _invalid(
            f"The certificate request must carry an RSA key of {MIN_RSA_BITS} to {key_limits.MAX_RSA_BITS} bits.", 50032
        )
    if not csr.is_signature_valid:
        raise _invalid("The certificate request signature is invalid.", 50006)
    return key


def parse_transport_key(value_b64: str) -> rsa.RSAPublicKey:
    """A BCRYPT_RSAKEY_BLOB (`RSA1`, public part only) or, from macOS/Android, base64 of a JWK."""
    raw = _b64(value_b64, "TransportKey")
    if raw.startswith(b"RSA1"):
        if len(raw) < 24:
            raise _invalid("TransportKey is a truncated BCRYPT_RSAKEY_BLOB.")
        _, bits, e_len, n_len, p1, p2 = struct.unpack("<4sLLLLL", raw[:24])
        if p1 or p2 or len(raw) != 24 + e_len + n_len:
            raise _invalid("TransportKey is not a public BCRYPT_RSAKEY_BLOB.")
        e = int.from_bytes(raw[24 : 24 + e_len], "big")
        n = int.from_bytes(raw[24 + e_len :], "big")
    else:
        try:
            jwk = jsonlimits.loads(raw)
            e = int.from_bytes(base64.b64decode(jwk["e"]), "big")
            n = int.from_bytes(base64.b64decode(jwk["n"]), "big")
            bits = n.bit_length()
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise _invalid("TransportKey is neither a BCRYPT_RSAKEY_BLOB nor a JWK.") from exc
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise _invalid("TransportKey is not a valid RSA public key.") from exc
    if not MIN_RSA_BITS <= key.key_size <= key_limits.MAX_RSA_BITS or key.key_size != bits:
        raise _invalid(f"TransportKey must be an RSA key of {MIN_RSA_BITS} to {key_limits.MAX_RSA_BITS} bits.", 50032)
    return key


def spki(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify_signed_sid(
    sid_stamp: str, signed_blob_b64: str, user_certificate_der: bytes, expected_sid: str, now: datetime
) -> None:
    """Hybrid join proof: `<computer SID>.<yyyy-MM-dd HH:mm:ss>Z` signed (PKCS#1 v1.5, SHA-256) by the key
    of the certificate the computer wrote to its AD userCertificate, recent, and naming the synced SID."""
    sid, _, stamp = sid_stamp.rpartition(".")
    try:
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as e:
        raise _invalid("ClientIdentity.Sid must be '<SID>.<yyyy-MM-dd HH:mm:ss>Z'.") from e
    if sid.upper() != expected_sid.upper():
        raise DRSError(
            400, "AuthenticationError", 50155, "ClientIdentity.Sid does not match the device's on-premises SID."
        )
    if abs(now - when) > SID_SKEW:
        raise DRSError(400, "AuthenticationError", 50013, "ClientIdentity.Sid timestamp is outside the allowed window.")
    key = x509.load_der_x509_certificate(user_certificate_der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    try:
        key.verify(
            _b64(signed_blob_b64, "ClientIdentity.SignedBlob"), sid_stamp.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature as e:
        raise DRSError(
            400,
            "AuthenticationError",
            50006,
            "ClientIdentity.SignedBlob does not verify with the device's userCertificate.",
        ) from e


def sid_from_guid(guid: str) -> str:
    """An Entra object as a Windows SID (`S-1-12-1-a-b-c-d` from the GUID's four little-endian words)."""
    words = struct.unpack("<4L", uuid.UUID(guid).bytes_le)
    return "S-1-12-1-" + "-".join(str(w) for w in words)


@dataclass(frozen=True)
class DeviceCertificate:
    cert: x509.Certificate

    @cached_property
    def der(self) -> bytes:  # encoded once for the thumbprint and the reply (~0.01 ms each time)
        return b.cert_der(self.cert)

    @cached_property
    def thumbprint(self) -> str:  # the join's reply and its device row: worked out once
        return b.der_thumbprint(self.der)

    @property
    def der_b64(self) -> str:
        return base64.b64encode(self.der).decode()


class DeviceCA:
    """The emulated `MS-Organization-Access` CA (key material from the lab PKI: survives restarts)."""

    def __init__(self, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
        self.cert, self.key = cert, key
        self.leaves = b.LeafIssuer(cert, key, ekus=[b.CLIENT_AUTH], days=DEVICE_CERT_DAYS)
        self.signed = SignedCertificates(self)

    def issue(
        self,
        device_key: rsa.RSAPublicKey,
        *,
        device_id: str,
        user_id: str | None,
        tenant_id: str,
        joined: bool,
        region: str,
    ) -> DeviceCertificate:
        extra: list[x509.ExtensionType] = [
            x509.UnrecognizedExtension(OID_DEVICE_ID, uuid.UUID(device_id).bytes_le),
            x509.UnrecognizedExtension(OID_TENANT_ID, uuid.UUID(tenant_id).bytes_le),
            x509.UnrecognizedExtension(OID_JOIN_TYPE, b"1" if joined else b"0"),
            x509.UnrecognizedExtension(OID_REGION, region.encode()),
        ]
        if user_id:
            extra.append(x509.UnrecognizedExtension(OID_USER_ID, uuid.UUID(user_id).bytes_le))
        return DeviceCertificate(self.leaves.issue(device_key, b.name(device_id), extra))

    def issued(self, cert: x509.Certificate, now: datetime) -> bool:
        """Whether this CA signed `cert` and it is within its validity period."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


@dataclass(frozen=True)
class SignedCertificate:
    """A certificate whose signature by the device CA was verified, with what a device-signed request reads of it."""

    cert: x509.Certificate
    public_key: CertificatePublicKeyTypes
    device_id: str | None
    thumbprint: str
    not_before: datetime
    not_after: datetime

    def valid(self, now: datetime) -> bool:
        return self.not_before <= now <= self.not_after


class SignedCertificates:
    """Device certificates (as the base64 text of a request's `x5c`) whose CA signature was verified: a device
    signs its token requests with the same certificate for years, and loading it, checking the CA's signature
    and hashing it cost ~0.1 ms of CPU per request (issue 20). Found by its exact text, so a certificate that
    differs by one character is read and verified in full; the validity period is checked on every use by the
    caller, and so is everything the request's signature, the device row (enabled, this thumbprint) and the nonce
    prove. Only certificates the CA signed are kept; bounded, the oldest go first."""

    def __init__(self, ca: DeviceCA, size: int = 4096) -> None:
        self.ca, self.size = ca, size
        self._known: dict[str, SignedCertificate] = {}
        self._lock = threading.Lock()

    def __contains__(self, x5c: object) -> bool:
        """Whether the certificate of this exact text is kept (its CA signature verified before)."""
        with self._lock:
            return x5c in self._known

    def get(self, x5c: str) -> SignedCertificate | None:
        """The certificate of base64 `x5c` if the CA signed it, None if it did not (not kept); raises
        binascii.Error / ValueError where `x5c` is not base64 of a DER certificate."""
        with self._lock:
            found = self._known.get(x5c)
        if found is not None:
            return found
        cert = x509.load_der_x509_certificate(base64.b64decode(x5c, validate=True))
        try:
            cert.verify_directly_issued_by(self.ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return None
        found = SignedCertificate(
            cert,
            cert.public_key(),
            device_id_of(cert),
            b.sha1_thumbprint(cert),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
        )
        with self._lock:
            if len(self._known) >= self.size:
                self._known.pop(next(iter(self._known)))
            self._known[x5c] = found
        return found


def device_id_of(cert: x509.Certificate) -> str | None:
    """The device ID is the certificate subject's common name."""
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    value = names[-1].value if names else None
    return value.lower() if isinstance(value, str) else None
