"""Primary refresh tokens over httpx, built from the wire contract ([MS-OAPXBC]; docs/protocol-notes.md, Entra §2.3):
issuance and use with both KDF versions, and the bad input — malformed, replayed, wrongly signed, from
another tenant, after the device was deleted — each refused with its AADSTS code and nothing stored."""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cmglab.runtime.lab import Lab
from cmglab.wire import prt_crypto
from tests.support.entra_device import (
    CONFIGMGR_CLIENT,
    JWT_BEARER,
    EntraClient,
    claims,
    entra_session,
    join_body,
    new_key,
)
from tests.support.lab import lab_client, lab_fixture

WINDOWS_SIGN_IN = "38aa3b87-a06d-4817-b275-7a316988d93b"
CONFIGMGR = "https://ConfigMgrService"


entra = lab_fixture("entra", session=entra_session)


@dataclass
class Device:
    device_id: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    transport: rsa.RSAPrivateKey


@dataclass
class Prt:
    token: str
    session_key: bytes
    reply: dict[str, Any]


def join(entra: EntraClient) -> Device:
    key, transport = new_key(), new_key()
    reply = entra.join(join_body(key, transport, name="LAB-PRT"))
    assert reply.status_code == 201, reply.text
    cert = x509.load_der_x509_certificate(base64.b64decode(reply.json()["Certificate"]["RawBody"]))
    return Device(str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value), cert, key, transport)


def password_prt_request(entra: EntraClient) -> dict[str, Any]:
    """The inner grant Windows' CloudAP sends at sign-in ([MS-OAPXBC] 3.1.5.1.2.1)."""
    return {
        "client_id": WINDOWS_SIGN_IN,
        "scope": "openid aza ugs",
        "group_sids": [],
        "win_ver": "10.0.22631.4169",
        "grant_type": "password",
        "username": entra.alice.upn,
        "password": entra.alice.password,
    }


def get_prt(entra: EntraClient, device: Device) -> Prt:
    reply = entra.device_request(device, password_prt_request(entra))  # type: ignore[arg-type]
    assert reply.status_code == 200, reply.text
    body = reply.json()
    return Prt(body["refresh_token"], prt_crypto.open_session_key(body["session_key_jwe"], device.transport), body)


def prt_request(
    entra: EntraClient,
    prt: Prt,
    payload: dict[str, Any],
    *,
    tenant: str | None = None,
    kdf_ver: int = 2,
    session_key: bytes | None = None,
) -> httpx.Response:
    request = prt_crypto.sign(
        {"refresh_token": prt.token, "request_nonce": entra.nonce(), **payload},
        session_key or prt.session_key,
        kdf_ver=kdf_ver,
    )
    return post_request(entra, request, tenant)


def post_request(entra: EntraClient, request: str, tenant: str | None = None) -> httpx.Response:
    return entra.http.post(
        f"{entra.login}/{tenant or entra.tenant.tenant_id}/oauth2/token",
        data={"windows_api_version": "2.2", "grant_type": JWT_BEARER, "request": request, "client_info": "1"},
    )


def token_payload() -> dict[str, Any]:
    return {
        "grant_type": "refresh_token",
        "client_id": CONFIGMGR_CLIENT,
        "resource": CONFIGMGR,
        "scope": "openid",
        "iss": "aad:brokerplugin",
        "redirect_uri": f"ms-appx-web://Microsoft.AAD.BrokerPlugin/{CONFIGMGR_CLIENT}",
    }


def aadsts(reply: httpx.Response) -> int:
    assert reply.status_code >= 400, reply.text
    return int(reply.json()["error_codes"][0])


def stored(lab: Lab) -> tuple[int, int]:
    """(PRTs, refresh tokens) in the store."""
    with sqlite3.connect(lab.dir / "data" / "entra.db") as db:
        return (
            db.execute("select count(*) from primary_refresh_tokens").fetchone()[0],
            db.execute("select count(*) from refresh_tokens").fetchone()[0],
        )


def test_prt_issued_then_used_with_both_kdf_versions(entra: EntraClient, lab: Lab) -> None:
    device = join(entra)
    prt = get_prt(entra, device)
    assert prt.reply["token_type"] == "pop" and prt.reply["refresh_token_expires_in"] == 1209600
    assert "access_token" not in prt.reply and "resource" not in prt.reply
    header = json.loads(prt_crypto.unb64url(prt.reply["session_key_jwe"].split(".")[0]))
    assert header == {"enc": "A256GCM", "alg": "RSA-OAEP"}
    assert claims(prt.reply["id_token"])["aud"] == WINDOWS_SIGN_IN
    for kdf_ver in (1, 2):
        reply = prt_request(entra, prt, token_payload(), kdf_ver=kdf_ver)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/jose"), reply.text
        body = json.loads(prt_crypto.decrypt_reply(reply.text, prt.session_key))
        token = claims(body["access_token"])
        assert token["deviceid"] == device.device_id and token["aud"] == CONFIGMGR and token["amr"] == ["pwd", "rsa"]
    # a PRT is no refresh token: the plain refresh grant does not know it
    plain = entra.http.post(
        f"{entra.login}/common/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": CONFIGMGR_CLIENT,
            "refresh_token": prt.token,
            "resource": CONFIGMGR,
        },
    )
    assert aadsts(plain) == 9002313


def test_replayed_request_is_refused(entra: EntraClient, lab: Lab) -> None:
    prt = get_prt(entra, join(entra))
    request = prt_crypto.sign(
        {"refresh_token": prt.token, "request_nonce": entra.nonce(), **token_payload()}, prt.session_key
    )
    assert post_request(entra, request).status_code == 200
    before = stored(lab)
    assert aadsts(post_request(entra, request)) == 50013
    assert stored(lab) == before


def test_malformed_and_badly_signed_requests_are_refused(entra: EntraClient, lab: Lab) -> None:
    prt = get_prt(entra, join(entra))
    before = stored(lab)
    # not a JWT, only pretending to be one with a ctx header
    fake = jwt.encode({"x": 1}, b"k" * 32, algorithm="HS256", headers={"ctx": "!!"})
    assert aadsts(post_request(entra, fake)) == 900144  # names no PRT
    bad_ctx = jwt.encode(
        {"refresh_token": prt.token, "request_nonce": entra.nonce()},
        b"k" * 32,
        algorithm="HS256",
        headers={"ctx": "!!notbase64", "kdf_ver": 2},
    )
    assert aadsts(post_request(entra, bad_ctx)) == 50155
    unknown_kdf = jwt.encode(
        {"refresh_token": prt.token},
        b"k" * 32,
        algorithm="HS256",
        headers={"ctx": base64.b64encode(b"c" * 24).decode(), "kdf_ver": 7},
    )
    assert aadsts(post_request(entra, unknown_kdf)) == 5000611
    assert aadsts(prt_request(entra, prt, token_payload(), session_key=b"\x01" * 32)) == 50155
    unknown = Prt("0.AAAA" + "x" * 40, prt.session_key, {})
    assert aadsts(prt_request(entra, unknown, token_payload())) == 9002313
    no_nonce = prt_crypto.sign({"refresh_token": prt.token, **token_payload()}, prt.session_key)
    assert aadsts(post_request(entra, no_nonce)) == 900144
    assert stored(lab) == before


def test_prt_from_another_tenant_is_refused(entra: EntraClient, lab: Lab) -> None:
    prt = get_prt(entra, join(entra))
    other = lab.config.tenants[1].tenant_id
    before = stored(lab)
    assert aadsts(prt_request(entra, prt, token_payload(), tenant=other)) == 70000
    assert stored(lab) == before


def test_session_key_after_device_deletion_is_refused(entra: EntraClient, lab: Lab, tmp_path: Path) -> None:
    device = join(entra)
    prt = get_prt(entra, device)
    cert_path, key_path = tmp_path / "d.pem", tmp_path / "d.key"
    cert_path.write_bytes(device.cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        device.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with lab_client(lab, cert=(cert_path, key_path)) as http:
        gone = http.delete(f"{entra.drs}/EnrollmentServer/device/{device.device_id}", params={"api-version": "1.0"})
        assert gone.status_code in (200, 204), gone.text
    before = stored(lab)
    assert aadsts(prt_request(entra, prt, token_payload())) == 700003
    assert aadsts(prt_request(entra, prt, {**token_payload(), "scope": "openid aza ugs"})) == 700003
    assert stored(lab) == before


def test_prt_cookie_bad_signature_gets_the_sign_in_page(entra: EntraClient, lab: Lab) -> None:
    prt = get_prt(entra, join(entra))
    redirect = "https://login.microsoftonline.com/common/oauth2/nativeclient"
    params = {"client_id": CONFIGMGR_CLIENT, "response_type": "code", "redirect_uri": redirect, "resource": CONFIGMGR}
    url = f"{entra.login}/common/oauth2/authorize"
    forged = prt_crypto.sign(
        {"refresh_token": prt.token, "is_primary": "true", "request_nonce": entra.nonce()}, b"\x02" * 32
    )
    reply = entra.http.get(url, params=params, headers={"Cookie": f"x-ms-RefreshTokenCredential={forged}"})
    assert reply.status_code == 200 and "AADSTS50155" in reply.text
    good = prt_crypto.sign(
        {"refresh_token": prt.token, "is_primary": "true", "request_nonce": entra.nonce()}, prt.session_key
    )
    reply = entra.http.get(url, params=params, headers={"Cookie": f"x-ms-RefreshTokenCredential={good}"})
    assert reply.status_code == 302 and reply.headers["location"].startswith(redirect + "?code="), reply.text
    replay = entra.http.get(url, params=params, headers={"Cookie": f"x-ms-RefreshTokenCredential={good}"})
    assert replay.status_code == 200 and "AADSTS50013" in replay.text
