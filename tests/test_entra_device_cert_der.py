"""The DRS's device certificates written as DER (device_cert_der.py) are byte for byte the certificates
cryptography's builder makes (pki.builders.leaf) with the same serial and validity: same subject, issuer, key,
extensions in the same order, same signature (PKCS#1 v1.5 is deterministic)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cmglab.pki import builders as b
from cmglab.services.entra import device_cert_der as der
from cmglab.services.entra import drs


@pytest.fixture(scope="module")
def ca() -> drs.DeviceCA:
    key = b.new_key()
    cert = b.self_signed(
        key, b.name("MS-Organization-Access", x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lab")), ekus=[]
    )
    return drs.DeviceCA(cert, key)


def _builders(
    ca: drs.DeviceCA,
    device_key: rsa.RSAPublicKey,
    device_id: str,
    extra: Sequence[x509.ExtensionType],
    start: datetime,
    serial: int,
) -> bytes:
    issuer = b.LeafIssuer(ca.cert, ca.key, ekus=[b.CLIENT_AUTH], days=drs.DEVICE_CERT_DAYS)
    ski = x509.SubjectKeyIdentifier.from_public_key(device_key)
    extensions = [x509.Extension(ski.oid, False, ski), *issuer.constant]
    extensions += [x509.Extension(e.oid, False, e) for e in extra]
    builder = x509.CertificateBuilder(
        ca.cert.subject, b.name(device_id), device_key, serial, start, start + issuer.validity, extensions
    )
    return b.cert_der(builder.sign(ca.key, hashes.SHA256()))


@pytest.mark.parametrize(
    ("serial", "start", "user"),
    [
        (1, datetime(2026, 11, 26, 13, 5, 7, 123456, tzinfo=UTC), True),
        (0x7F, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), False),
        (0x80, datetime(2041, 6, 1, 0, 0, 0, 999999, tzinfo=UTC), True),  # validity ends after 2049: GeneralizedTime
        ((1 << 158) + 12345, datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC), True),
        (x509.random_serial_number(), b.utcnow(), True),
    ],
)
def test_a_device_certificate_is_the_one_the_builder_makes(
    ca: drs.DeviceCA, serial: int, start: datetime, user: bool
) -> None:
    device_key = b.new_key().public_key()
    device_id, tenant_id, user_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    extra = [
        x509.UnrecognizedExtension(drs.OID_DEVICE_ID, uuid.UUID(device_id).bytes_le),
        x509.UnrecognizedExtension(drs.OID_TENANT_ID, uuid.UUID(tenant_id).bytes_le),
        x509.UnrecognizedExtension(drs.OID_JOIN_TYPE, b"1"),
        x509.UnrecognizedExtension(drs.OID_REGION, b"NA"),
    ]
    if user:
        extra.append(x509.UnrecognizedExtension(drs.OID_USER_ID, uuid.UUID(user_id).bytes_le))
    made = ca.leaves.issue(
        device_key, device_id, [(der.oid(e.oid), e.value) for e in extra], not_before=start, serial=serial
    )
    assert made == _builders(ca, device_key, device_id, extra, start, serial)


def test_a_joins_certificate_is_the_cas_with_the_devices_extensions(ca: drs.DeviceCA) -> None:
    device_key = b.new_key().public_key()
    device_id, tenant_id, user_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    issued = ca.issue(device_key, device_id=device_id, user_id=user_id, tenant_id=tenant_id, joined=True, region="EU")
    cert = issued.cert
    assert ca.issued(cert, datetime.now(UTC)) and drs.device_id_of(cert) == device_id
    assert issued.thumbprint == b.sha1_thumbprint(cert) and b.cert_der(cert) == issued.der
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=drs.DEVICE_CERT_DAYS)
    assert 0 < cert.serial_number < 1 << 159
    values = {e.oid: e.value.value for e in cert.extensions if isinstance(e.value, x509.UnrecognizedExtension)}
    assert values == {
        drs.OID_DEVICE_ID: uuid.UUID(device_id).bytes_le,
        drs.OID_TENANT_ID: uuid.UUID(tenant_id).bytes_le,
        drs.OID_JOIN_TYPE: b"1",
        drs.OID_REGION: b"EU",
        drs.OID_USER_ID: uuid.UUID(user_id).bytes_le,
    }
    assert cert.public_key() == device_key
