"""Bad input gets Entra's error envelope with the right AADSTS code, and never a device object."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from cmglab.pki.labpki import MS_ORG_ACCESS_NAME
from cmglab.tools.processes import LabProcesses
from tests.support.entra_device import (
    CONFIGMGR_CLIENT,
    EntraClient,
    Joined,
    bcrypt_blob_b64,
    device_token_request,
    entra_client,
    entra_session,
    join_body,
    new_key,
)
from tests.support.lab import lab_fixture, new_lab

entra = lab_fixture("entra", session=entra_session)


@pytest.fixture(scope="module")
def device(entra: EntraClient, tmp_path_factory: pytest.TempPathFactory) -> Joined:
    return entra.join_device(tmp_path_factory.mktemp("errors"), "LAB-ERRORS")


def aadsts(reply: httpx.Response, code: int, error: str, status: int = 400) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["error"] == error and body["error_codes"] == [code], body
    assert re.fullmatch(
        rf"AADSTS{code}: .+\r\nTrace ID: [0-9a-f-]{{36}}\r\nCorrelation ID: [0-9a-f-]{{36}}"
        r"\r\nTimestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ",
        body["error_description"],
        re.S,
    )
    assert body["trace_id"] in body["error_description"] and body["timestamp"] in body["error_description"]
    assert body["error_uri"] == f"https://login.microsoftonline.com/error?code={code}"


def drs_error(reply: httpx.Response, code: int, status: int) -> None:
    assert reply.status_code == status, reply.text
    assert reply.json()["Message"].startswith(f"AADSTS{code}: "), reply.json()


def test_wrong_password_unknown_user_tenant_and_client(entra: EntraClient) -> None:
    aadsts(entra.ropc(password="wrong"), 50126, "invalid_grant")
    aadsts(entra.ropc(upn="nobody@lab.test"), 50034, "invalid_grant")
    other = entra.lab.config.tenants[1]
    aadsts(entra.ropc(tenant=other.tenant_id), 50034, "invalid_grant")  # alice is not in that tenant
    aadsts(entra.ropc(tenant="nowhere.example"), 90002, "invalid_request")
    aadsts(entra.ropc(client_id="11111111-2222-3333-4444-555555555555"), 700016, "unauthorized_client")
    aadsts(entra.ropc(resource="https://unknown.example"), 500011, "invalid_resource")


def test_correlation_id_is_echoed(entra: EntraClient) -> None:
    reply = entra.http.post(
        f"{entra.login}/common/oauth2/token",
        data={"grant_type": "password"},
        headers={"client-request-id": "0f0f0f0f-1111-2222-3333-444444444444"},
    )
    aadsts(reply, 900144, "invalid_request")
    assert reply.json()["correlation_id"] == "0f0f0f0f-1111-2222-3333-444444444444"
    aadsts(
        entra.http.post(f"{entra.login}/common/oauth2/token", data={"grant_type": "magic"}),
        70003,
        "unsupported_grant_type",
    )


def test_client_credentials_errors(entra: EntraClient) -> None:
    app = next(a for a in entra.lab.config.apps if a.client_secret)
    url = f"{entra.login}/{entra.tenant.tenant_id}/oauth2/token"
    form = {"grant_type": "client_credentials", "client_id": app.app_id, "resource": "https://ConfigMgrService"}
    aadsts(entra.http.post(url, data={**form, "client_secret": "wrong"}), 7000215, "invalid_client", 401)
    aadsts(entra.http.post(url, data=form), 7000218, "invalid_client", 401)
    aadsts(
        entra.http.post(f"{entra.login}/common/oauth2/token", data={**form, "client_secret": app.client_secret}),
        9001023,
        "invalid_request",
    )


def test_bad_refresh_token(entra: EntraClient) -> None:
    aadsts(
        entra.http.post(
            f"{entra.login}/common/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "client_id": CONFIGMGR_CLIENT,
                "refresh_token": "1.Anot-a-token",
                "resource": "https://ConfigMgrService",
            },
        ),
        9002313,
        "invalid_grant",
    )


def test_replayed_and_unknown_nonce(entra: EntraClient, device: Joined) -> None:
    nonce = entra.nonce()
    assert entra.device_request(device, device_token_request(), nonce=nonce).status_code == 200
    aadsts(entra.device_request(device, device_token_request(), nonce=nonce), 50013, "invalid_grant")
    aadsts(
        entra.device_request(device, device_token_request(), nonce="AwABEgEAAAADAOz_made-up"), 50013, "invalid_grant"
    )


def test_expired_and_foreign_signed_assertions(entra: EntraClient, device: Joined) -> None:
    expired = {**device_token_request(), "exp": int(time.time()) - 600}
    aadsts(entra.device_request(device, expired), 50013, "invalid_grant")

    # signed by another key than the certificate's
    imposter = Joined(device.device_id, device.cert, new_key(), device.cert_path, device.key_path)
    aadsts(entra.device_request(imposter, device_token_request()), 50155, "invalid_grant")

    # a certificate for the same device ID from a look-alike MS-Organization-Access CA
    fake_ca_key, key = new_key(), new_key()
    now = datetime.now(UTC) - timedelta(minutes=1)
    forged = (
        x509.CertificateBuilder()
        .subject_name(device.cert.subject)
        .issuer_name(MS_ORG_ACCESS_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .sign(fake_ca_key, hashes.SHA256())
    )
    aadsts(
        entra.device_request(
            Joined(device.device_id, forged, key, device.cert_path, device.key_path), device_token_request()
        ),
        50155,
        "invalid_grant",
    )

    malformed = entra.http.post(
        f"{entra.login}/common/oauth2/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "request": "not.a.jws"},
    )
    aadsts(malformed, 50027, "invalid_request")


def test_join_refusals_write_no_device(entra: EntraClient, tmp_path: Path) -> None:
    before = len(entra.devices())
    token = entra.drs_token()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"{entra.drs}/EnrollmentServer/device/?api-version=2.0"

    # a CSR whose signature does not verify
    body = join_body(new_key(), new_key())
    csr = bytearray(base64.b64decode(body["CertificateRequest"]["Data"]))
    csr[-1] ^= 0xFF
    body["CertificateRequest"]["Data"] = base64.b64encode(bytes(csr)).decode()
    drs_error(entra.join(body, token), 50006, 400)

    drs_error(entra.http.post(url, content=b'{"CertificateRequest": {', headers=headers), 90014, 400)
    drs_error(entra.join({"TransportKey": bcrypt_blob_b64(new_key())}, token), 90014, 400)
    drs_error(
        entra.join({**join_body(new_key(), new_key()), "TransportKey": base64.b64encode(b"RSA1xx").decode()}, token),
        90014,
        400,
    )

    # a token for another audience, or none at all
    configmgr = entra.ropc("https://ConfigMgrService").json()["access_token"]
    drs_error(entra.join(join_body(new_key(), new_key()), configmgr), 50027, 401)
    drs_error(entra.http.post(url, json=join_body(new_key(), new_key())), 50027, 401)
    assert len(entra.devices()) == before


def test_reset_keeps_the_seeded_directory(tmp_path: Path) -> None:
    """On a lab of its own: a reset must not disturb the session lab other modules share."""
    lab = new_lab(tmp_path / "lab")
    procs = LabProcesses(lab)
    try:
        with entra_client(lab, procs) as own:
            own.join_device(tmp_path, "LAB-RESET")
            reply = own.http.post(f"{own.login}/_lab/reset", headers={"Authorization": f"Bearer {lab.admin_token()}"})
            assert reply.status_code == 200, reply.text
            assert own.devices() == []
            assert own.ropc().status_code == 200  # the lab config's users are seeded again
    finally:
        procs.stop_all()
