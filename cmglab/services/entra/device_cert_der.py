"""The DRS's device certificates written as DER around the CA's signature (issue 20).

cryptography's CertificateBuilder costs ~0.1 ms of CPU per certificate beyond the RSA signature (a Python object
per name, extension and identifier, then the Rust encoder); a join issues one, and everything in it but the
subject, the key, the serial, the validity and the device's own extensions is the same for every certificate of
the CA. `DeviceCertificateDER` encodes the constant parts once and the rest per certificate, then signs the TBS
with the CA's key (PKCS#1 v1.5, SHA-256): the bytes are those `pki.builders.leaf` makes with the same serial and
validity (tests/test_entra_device_cert_der.py compares them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

_VERSION_3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2
_SHA256_WITH_RSA = b"\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b\x05\x00"
_COMMON_NAME = b"\x06\x03\x55\x04\x03"  # 2.5.4.3
_UTF8_STRING, _UTC_TIME, _GENERALIZED_TIME = 0x0C, 0x17, 0x18


_SHORT = [bytes((n,)) for n in range(0x80)]  # a length under 128 is its own byte
_TAG = [bytes((n,)) for n in range(0x100)]


def _length(n: int) -> bytes:
    if n < 0x80:
        return _SHORT[n]
    size = (n.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


def tlv(tag: int, content: bytes) -> bytes:
    return _TAG[tag] + _length(len(content)) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def positive_integer(value: int) -> bytes:
    """INTEGER, minimal two's complement (a leading zero byte where the top bit is set)."""
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid(value: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in value.dotted_string.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def der_time(when: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, UTC."""
    if when.year < 2050:
        return tlv(_UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(_GENERALIZED_TIME, when.strftime("%Y%m%d%H%M%SZ").encode())


def extension(extension_oid: bytes, value: bytes, *, critical: bool = False) -> bytes:
    """Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }."""
    return sequence(extension_oid, b"\x01\x01\xff" if critical else b"", tlv(0x04, value))


def common_name(value: str) -> bytes:
    """Name: one RDN, the common name as UTF8String (what `pki.builders.name` makes)."""
    return sequence(tlv(0x31, sequence(_COMMON_NAME, tlv(_UTF8_STRING, value.encode()))))


class DeviceCertificateDER:
    """Certificates of one issuer with the same constant extensions (after the subject key identifier, as
    `pki.builders.leaf` orders them) and lifetime, written as DER and signed by the issuer's key."""

    def __init__(
        self,
        issuer_cert: x509.Certificate,
        issuer_key: rsa.RSAPrivateKey,
        constant: Sequence[x509.Extension[x509.ExtensionType]],
        validity: timedelta,
    ) -> None:
        self.issuer_key, self.validity = issuer_key, validity
        self.issuer = issuer_cert.subject.public_bytes()
        self.constant = b"".join(extension(oid(e.oid), e.value.public_bytes(), critical=e.critical) for e in constant)
        self._ski = oid(x509.SubjectKeyIdentifier.oid)

    def issue(
        self,
        public_key: rsa.RSAPublicKey,
        subject_cn: str,
        extra: Sequence[tuple[bytes, bytes]],
        *,
        not_before: datetime,
        serial: int | None = None,
    ) -> bytes:
        """The DER certificate: EXTRA is (the OID's DER, the extension's value) each, not critical, after the
        constant ones; SERIAL a random positive 159-bit number (as x509.random_serial_number) unless given."""
        if serial is None:
            serial = int.from_bytes(os.urandom(20), "big") >> 1
        start = not_before.replace(microsecond=0)
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key).digest
        extensions = b"".join(
            (
                extension(self._ski, tlv(0x04, ski)),
                self.constant,
                *(extension(o, v) for o, v in extra),
            )
        )
        tbs = sequence(
            _VERSION_3,
            positive_integer(serial),
            _SHA256_WITH_RSA,
            self.issuer,
            sequence(der_time(start), der_time(start + self.validity)),
            common_name(subject_cn),
            public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            tlv(0xA3, sequence(extensions)),
        )
        signature = self.issuer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        return sequence(tbs, _SHA256_WITH_RSA, tlv(0x03, b"\x00" + signature))
