"""The device: its layout, the DPAPI stand-in, the certificate stores, CMS decryption."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from cmglab.agent.ccm.cms import decrypt_enveloped
from cmglab.agent.ccm.state import sms_certificates
from cmglab.agent.certstore import MY, ROOT, SMS_ENCRYPTION, SMS_SIGNING
from cmglab.agent.device import Device, DeviceError
from cmglab.agent.protect import ProtectError
from cmglab.pki import builders as b
from cmglab.services.management_point.policy_crypto import envelope


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device.create(tmp_path / "dev", name="lab99", hosts=["cmg.lab.test:8444:127.0.0.1"])


def test_layout(device: Device) -> None:
    assert device.info.name == "LAB99" and device.info.fqdn == "lab99.lab.test"
    assert device.hosts_path.read_text() == "cmg.lab.test:8444:127.0.0.1\n"
    assert device.resolve(["x:1:127.0.0.2"])[-1] == "x:1:127.0.0.2"
    assert stat.S_IMODE((device.home / "Keys" / "dpapi.key").stat().st_mode) == 0o600
    with pytest.raises(DeviceError):
        Device.create(device.home)
    with pytest.raises(DeviceError):
        Device.open(device.home.parent / "missing")
    log = device.ccm_log("CcmMessaging.log")
    log.info("hello")
    device.close_logs()
    text = device.ccm_log_path("CcmMessaging.log").read_text()
    assert text.startswith("<![LOG[hello]LOG]!>") and 'component="CcmMessaging"' in text


def test_protect_is_bound_to_device_and_purpose(device: Device, tmp_path: Path) -> None:
    blob = device.dpapi.protect(b"secret", "CCM token cache")
    assert b"secret" not in blob
    assert device.dpapi.unprotect(blob, "CCM token cache") == b"secret"
    with pytest.raises(ProtectError):
        device.dpapi.unprotect(blob, "another purpose")
    other = Device.create(tmp_path / "other")
    with pytest.raises(ProtectError):
        other.dpapi.unprotect(blob, "CCM token cache")


def _ca() -> tuple[b.RSAKey, b.x509.Certificate]:
    key = b.new_key()
    return key, b.self_signed_ca(key, b.name("test root"))


def test_pki_client_certificate_selection(device: Device) -> None:
    ca_key, ca = _ca()
    good_key = b.new_key()
    good = b.leaf(good_key.public_key(), b.name("good"), ca, ca_key, ekus=[b.CLIENT_AUTH])
    expired_key = b.new_key()
    expired = b.leaf(
        expired_key.public_key(),
        b.name("old"),
        ca,
        ca_key,
        ekus=[b.CLIENT_AUTH],
        days=1,
        not_before=b.utcnow() - timedelta(days=10),
    )
    server_key = b.new_key()
    server = b.leaf(server_key.public_key(), b.name("srv"), ca, ca_key, ekus=[b.SERVER_AUTH])
    for cert, key in ((good, good_key), (expired, expired_key), (server, server_key)):
        device.stores.add(MY, cert, key)
    assert device.stores.pki_client_certs() == []  # the root is not trusted yet
    device.stores.add(ROOT, ca)
    found = device.stores.pki_client_certs()
    assert [c.thumbprint for c in found] == [b.sha1_thumbprint(good)]
    assert stat.S_IMODE(found[0].key_path.stat().st_mode) == 0o600  # type: ignore[union-attr]
    assert device.stores.device_cert() is None


def test_sms_certificates_are_made_once(device: Device) -> None:
    signing, encryption = sms_certificates(device)
    again = sms_certificates(device)
    assert (signing.thumbprint, encryption.thumbprint) == (again[0].thumbprint, again[1].thumbprint)
    assert signing.friendly_name == SMS_SIGNING and encryption.friendly_name == SMS_ENCRYPTION


def test_secret_policy_decryption(device: Device) -> None:
    _, encryption = sms_certificates(device)
    body = "<Policy>secret</Policy>".encode("utf-16-le")
    assert decrypt_enveloped(envelope(body, encryption.cert()), encryption.key()) == body
