"""Issue 15: certificates and keys a client hands the MP or DRS are capped before they are verified or stored
(cmglab/wire/key_limits.py): a registration or CCM_STS proof with an oversized certificate, a DRS join with a
key over 4096 bits, is refused in the protocol's shape and leaves no row."""

from __future__ import annotations

import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.core.labconfig import DRS_RESOURCE
from cmglab.pki import builders as b
from cmglab.runtime.lab import Lab
from cmglab.tools.reliability.material import Material
from cmglab.wire import ccm_messaging as cm
from cmglab.wire import key_limits
from tests.support.entra_device import bcrypt_blob_b64, csr_b64, new_key
from tests.support.lab import lab_fixture
from tests.support.sec_registration import Box, post_registration, site_rows


def _padded_sms_cert(key: rsa.RSAPrivateKey, names: int) -> x509.Certificate:
    """An SMS certificate blown up with `names` DNS SANs."""
    cert = b.self_signed(key, b.name("ConfigMgr Client"), ekus=[b.SMS_SIGNING_EKU, b.SMS_EKU], data_encipherment=True)
    from cryptography.hazmat.primitives import hashes

    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"n{i:05d}.padding.lab.test") for i in range(names)]),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256())


BIG_KEY = rsa.generate_private_key(public_exponent=65537, key_size=4160)


def test_limits_in_process() -> None:
    small = new_key()
    ok = _padded_sms_cert(small, 10)
    assert key_limits.load_hex_cert(cm.cert_hex(ok), "x").serial_number == ok.serial_number
    with pytest.raises(key_limits.TooLarge):
        key_limits.load_hex_cert(cm.cert_hex(_padded_sms_cert(small, 1000)), "x")
    with pytest.raises(key_limits.TooLarge):
        key_limits.load_hex_cert("00" * (key_limits.MAX_CERT_BYTES + 100), "x")
    with pytest.raises(key_limits.TooLarge):
        key_limits.check_key(BIG_KEY.public_key(), "x")


services = lab_fixture("entra", "management-point")


class BigBox(Box):
    def __post_init__(self) -> None:
        self.cert = _padded_sms_cert(self.key, 1000)


def test_an_oversized_certificate_registers_nothing(services: Lab) -> None:
    box = BigBox("BIGCERT")
    before = len(site_rows(services, "clients"))
    attrs = post_registration(services, box)
    assert attrs["Status"] == "3", attrs
    assert len(site_rows(services, "clients")) == before
    assert box.thumbprint not in {c["signing_thumbprint"] for c in site_rows(services, "clients")}


def test_drs_refuses_keys_over_4096_bits(services: Lab, tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.support.sec_attacks import client

    token = Material(services, tmp_path_factory.mktemp("keys")).entra_token(audience=DRS_RESOURCE)
    drs = services.url("entra", host="enterpriseregistration.windows.net")
    name = f"BIGKEY-{uuid.uuid4().hex[:6]}"
    bodies = [
        {
            "CertificateRequest": {"Type": "pkcs10", "Data": csr_b64(BIG_KEY)},
            "TransportKey": bcrypt_blob_b64(new_key()),
        },
        {
            "CertificateRequest": {"Type": "pkcs10", "Data": csr_b64(new_key())},
            "TransportKey": bcrypt_blob_b64(BIG_KEY),
        },
    ]
    with client(services) as c:
        for body in bodies:
            reply = c.post(
                f"{drs}/EnrollmentServer/device/",
                params={"api-version": "2.0"},
                json={
                    **body,
                    "TargetDomain": "lab.test",
                    "DeviceType": "Windows",
                    "OSVersion": "10.0.19045.3803",
                    "DeviceDisplayName": name,
                    "JoinType": 0,
                },
                headers={"Authorization": f"Bearer {token}"},
            )
            assert reply.status_code == 400 and "4096" in reply.json()["Message"], reply.text
        devices = c.get(f"{services.url('entra')}/_lab/devices").json()["devices"]
    assert not [d for d in devices if d.get("display_name") == name]
