"""ROADtools roadtx, unmodified, against the lab: it hard-codes login.microsoftonline.com and
enterpriseregistration.windows.net, so it runs with those names resolved to the lab's Entra on 443
(tests/support/resolved_names.py) and the lab CA in REQUESTS_CA_BUNDLE."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from cmglab.runtime.lab import Lab
from tests.support.entra_device import CONFIGMGR_CLIENT, DRS_RESOURCE, claims, self_signed
from tests.support.lab import lab_client
from tests.support.roadtx import Roadtx, roadtx_fixture

pytestmark = pytest.mark.netns


roadtx = roadtx_fixture("roadtx")


def devices(lab: Lab) -> dict[str, dict]:
    with lab_client(lab) as c:
        return {d["device_id"]: d for d in c.get(f"{lab.url('entra')}/_lab/devices").json()["devices"]}


def test_roadtx_join_device_token_and_delete(roadtx: Roadtx, lab: Lab, tmp_path: Path) -> None:
    alice, tid = lab.config.primary_tenant.users[0], lab.config.primary_tenant.tenant_id
    roadtx("gettokens", "-u", alice.upn, "-p", alice.password, "-r", DRS_RESOURCE, cwd=tmp_path)
    tokens = json.loads((tmp_path / ".roadtools_auth").read_text())
    assert claims(tokens["accessToken"])["aud"] == DRS_RESOURCE and tokens["tenantId"] == tid

    out = roadtx("device", "-a", "join", "-n", "LAB-ROADTX", cwd=tmp_path).stdout
    found = re.search(r"Device ID: ([0-9a-f-]{36})", out)
    assert found, out
    device_id = found.group(1)
    assert devices(lab)[device_id]["trust_type"] == "AzureAd"
    cert = x509.load_pem_x509_certificate((tmp_path / "lab-roadtx.pem").read_bytes())
    assert cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "MS-Organization-Access"

    # a device token with the certificate it received (srv_challenge nonce + device-signed request)
    roadtx(
        "deviceauth",
        "-c",
        "lab-roadtx.pem",
        "-k",
        "lab-roadtx.key",
        "-t",
        tid,
        "--client",
        CONFIGMGR_CLIENT,
        "-r",
        "https://ConfigMgrService",
        "--tokenfile",
        "device.json",
        cwd=tmp_path,
    )
    device_token = claims(json.loads((tmp_path / "device.json").read_text())["accessToken"])
    assert device_token["deviceid"] == device_id and device_token["idtyp"] == "device"
    assert device_token["aud"] == "https://ConfigMgrService" and device_token["amr"] == ["rsa"]

    # delete: TLS client authentication with the device certificate
    out = roadtx("device", "-a", "delete", "-c", "lab-roadtx.pem", "-k", "lab-roadtx.key", cwd=tmp_path).stdout
    assert "Device was deleted" in out, out
    assert device_id not in devices(lab)


def test_roadtx_hybrid_join(roadtx: Roadtx, lab: Lab, tmp_path: Path, admin_headers: dict[str, str]) -> None:
    """The computer's self-signed userCertificate (CN=objectGUID), synced by "Entra Connect" with the
    computer SID, then `roadtx hybriddevice` proves the SID with it."""
    computer = next(a for a in lab.config.active_directory.accounts if a.name.endswith("$"))
    object_guid, tid = str(uuid.uuid4()), lab.config.primary_tenant.tenant_id
    cert, key = self_signed(object_guid)
    (tmp_path / "lab02.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "lab02.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with lab_client(lab) as c:
        sync = c.post(
            f"{lab.url('entra')}/_lab/devices",
            headers=admin_headers,
            json={
                "tenant": tid,
                "device_id": object_guid,
                "onprem_sid": computer.sid,
                "display_name": "LAB02",
                "user_certificate": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
            },
        )
        assert sync.status_code == 201, sync.text

    roadtx("hybriddevice", "-c", "lab02.pem", "-k", "lab02.key", "--sid", str(computer.sid), "-t", tid, cwd=tmp_path)
    issued = x509.load_pem_x509_certificate((tmp_path / "lab02_aad.pem").read_bytes())
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == object_guid
    assert devices(lab)[object_guid]["join_type"] == 6
