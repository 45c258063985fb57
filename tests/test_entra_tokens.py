"""Tokens from the lab's Entra: MSAL Python (unmodified, real name resolution, port 443), and the
grants over httpx — password, client credentials, refresh, device code, the device-certificate flows,
token version by resource — and that keys and data survive a restart."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from tests.support.entra_device import (
    AAD_POWERSHELL,
    CONFIGMGR_CLIENT,
    EntraClient,
    claims,
    device_token_request,
    entra_session,
)
from tests.support.lab import lab_fixture
from tests.support.resolved_names import entra_on_443, namespaces_available, run_resolved, write_hosts

CONFIGMGR = "https://ConfigMgrService"


entra = lab_fixture("entra", session=entra_session)


def server_app(lab: Lab) -> tuple[str, str]:
    app = next(a for a in lab.config.apps if a.identifier_uri == CONFIGMGR)
    assert app.client_secret
    return app.app_id, app.client_secret


def verify(lab: Lab, token: str, audience: str) -> dict[str, Any]:
    key = lab.pki.entra_signing.cert().public_key()
    decoded: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], audience=audience)  # type: ignore[arg-type]
    return decoded


# -- MSAL Python, unmodified ------------------------------------------------------------------------
MSAL = r"""
import json, sys, msal
a = json.loads(sys.argv[1])
where = {"oidc_authority": a["oidc_authority"]} if "oidc_authority" in a else {"authority": a["authority"]}
if "secret" in a:
    app = msal.ConfidentialClientApplication(a["client_id"], client_credential=a["secret"],
                                             instance_discovery=False, **where)
    result = app.acquire_token_for_client(scopes=a["scopes"])
else:
    app = msal.PublicClientApplication(a["client_id"], instance_discovery=False, **where)
    result = app.acquire_token_by_username_password(a["username"], a["password"], scopes=a["scopes"])
    result["accounts"] = app.get_accounts()
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def msal_run(lab: Lab, lab_services: LabProcesses, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if not namespaces_available():
        pytest.skip("needs root and mount namespaces (unshare) to resolve the lab's names for MSAL")
    lab_services.ensure("entra")
    with entra_on_443(lab) as addr:
        hosts = write_hosts(tmp_path_factory.mktemp("msal") / "hosts", addr, lab.config.hosts.entra)

        def run(args: dict[str, Any]) -> dict[str, Any]:
            done = run_resolved(
                [sys.executable, "-c", MSAL, json.dumps(args)],
                hosts=hosts,
                env={"REQUESTS_CA_BUNDLE": str(lab.pki.ca_bundle)},
            )
            assert done.returncode == 0, done.stderr
            result: dict[str, Any] = json.loads(done.stdout)
            return result

        yield run


@pytest.mark.netns
def test_msal_password_on_the_lab_authority(msal_run: Any, lab: Lab) -> None:
    tenant = lab.config.primary_tenant
    alice = tenant.users[0]
    result = msal_run(
        {
            "authority": f"https://login.lab.test/{tenant.tenant_id}",
            "client_id": CONFIGMGR_CLIENT,
            "username": alice.upn,
            "password": alice.password,
            "scopes": [f"{CONFIGMGR}/.default"],
        }
    )
    assert "access_token" in result, result
    token = verify(lab, result["access_token"], CONFIGMGR)
    assert token["ver"] == "1.0" and token["iss"] == f"https://sts.windows.net/{tenant.tenant_id}/"
    assert token["upn"] == alice.upn and token["appid"] == CONFIGMGR_CLIENT and token["onprem_sid"] == alice.onprem_sid
    assert result["id_token_claims"]["preferred_username"] == alice.upn
    assert result["accounts"][0]["home_account_id"] == f"{alice.object_id}.{tenant.tenant_id}"
    assert result["refresh_token"]

    wrong = msal_run(
        {
            "authority": f"https://login.lab.test/{tenant.tenant_id}",
            "client_id": CONFIGMGR_CLIENT,
            "username": alice.upn,
            "password": "not-it",
            "scopes": [f"{CONFIGMGR}/.default"],
        }
    )
    assert wrong["error"] == "invalid_grant" and wrong["error_codes"] == [50126]


@pytest.mark.netns
def test_msal_client_credentials_validates_discovery(msal_run: Any, lab: Lab) -> None:
    tid = lab.config.primary_tenant.tenant_id
    app_id, secret = server_app(lab)
    for where in (
        {"authority": f"https://login.lab.test/{tid}"},
        # oidc_authority: MSAL checks the document's issuer against the authority
        {"oidc_authority": f"https://login.lab.test/{tid}/v2.0"},
    ):
        result = msal_run({**where, "client_id": app_id, "secret": secret, "scopes": [f"{CONFIGMGR}/.default"]})
        assert "access_token" in result, result
        token = verify(lab, result["access_token"], CONFIGMGR)
        assert token["idtyp"] == "app" and token["appid"] == app_id and token["appidacr"] == "1"
        assert token["tid"] == tid and "upn" not in token

    wrong = msal_run(
        {
            "authority": f"https://login.lab.test/{tid}",
            "client_id": app_id,
            "secret": "nope",
            "scopes": [f"{CONFIGMGR}/.default"],
        }
    )
    assert wrong["error"] == "invalid_client" and wrong["error_codes"] == [7000215]


# -- grants over httpx --------------------------------------------------------------------------------
def test_v2_password_gives_a_v1_token_for_a_v1_resource(entra: EntraClient, lab: Lab) -> None:
    alice, tid = entra.alice, entra.tenant.tenant_id
    reply = entra.http.post(
        f"{entra.login}/organizations/oauth2/v2.0/token",
        data={
            "client_id": CONFIGMGR_CLIENT,
            "grant_type": "password",
            "username": alice.upn,
            "password": alice.password,
            "scope": f"{CONFIGMGR}/.default offline_access openid profile",
            "client_info": "1",
        },
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert isinstance(body["expires_in"], int) and body["token_type"] == "Bearer" and body["refresh_token"]
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256" and header["kid"] == header["x5t"]
    token = verify(lab, body["access_token"], CONFIGMGR)
    assert token["ver"] == "1.0" and token["iss"] == f"https://sts.windows.net/{tid}/"
    assert token["amr"] == ["pwd"] and token["scp"] == "user_impersonation" and token["idtyp"] == "user"
    assert claims(body["id_token"])["iss"] == f"https://login.microsoftonline.com/{tid}/v2.0"

    # refresh: the multi-resource refresh token gets a token for another resource
    again = entra.http.post(
        f"{entra.login}/{tid}/oauth2/token",
        data={
            "client_id": CONFIGMGR_CLIENT,
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "resource": "https://graph.windows.net",
        },
    )
    assert again.status_code == 200, again.text
    assert isinstance(again.json()["expires_on"], str) and again.json()["resource"] == "https://graph.windows.net"
    assert claims(again.json()["access_token"])["oid"] == alice.object_id
    # refresh tokens are stored hashed
    with sqlite3.connect(entra.lab.dir / "data" / "entra.db") as db:
        stored = {row[0] for row in db.execute("SELECT token_hash FROM refresh_tokens")}
    assert stored and body["refresh_token"] not in stored


def test_v2_token_for_a_v2_resource(entra: EntraClient, lab: Lab, admin_headers: dict[str, str]) -> None:
    api = {"display_name": "Lab API v2", "identifier_uri": "api://lab-v2", "access_token_version": 2}
    created = entra.http.post(f"{entra.login}/_lab/apps", json=api, headers=admin_headers)
    assert created.status_code == 201, created.text
    app_id = created.json()["app_id"]
    reply = entra.http.post(
        f"{entra.login}/{entra.tenant.tenant_id}/oauth2/v2.0/token",
        data={
            "client_id": AAD_POWERSHELL,
            "grant_type": "password",
            "username": entra.alice.upn,
            "password": entra.alice.password,
            "scope": "api://lab-v2/.default",
        },
    )
    assert reply.status_code == 200, reply.text
    token = verify(lab, reply.json()["access_token"], app_id)
    assert token["ver"] == "2.0" and token["iss"] == f"https://login.microsoftonline.com/{entra.tenant.tenant_id}/v2.0"
    assert token["azp"] == AAD_POWERSHELL and token["preferred_username"] == entra.alice.upn
    assert "x5t" not in jwt.get_unverified_header(reply.json()["access_token"])


def test_device_code_flow(entra: EntraClient) -> None:
    start = entra.http.post(
        f"{entra.login}/organizations/oauth2/v2.0/devicecode",
        data={"client_id": AAD_POWERSHELL, "scope": f"{CONFIGMGR}/.default offline_access"},
    )
    assert start.status_code == 200, start.text
    code = start.json()
    assert code["verification_uri"] == f"{entra.login}/devicelogin" and code["interval"] == 5
    poll = {
        "client_id": AAD_POWERSHELL,
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": code["device_code"],
    }
    pending = entra.http.post(f"{entra.login}/organizations/oauth2/v2.0/token", data=poll)
    assert pending.json()["error"] == "authorization_pending" and pending.json()["error_codes"] == [70016]

    bad = entra.http.post(
        f"{entra.login}/devicelogin", data={"otc": code["user_code"], "login": entra.alice.upn, "passwd": "wrong"}
    )
    assert bad.status_code == 400 and "AADSTS50126" in bad.text
    ok = entra.http.post(
        f"{entra.login}/devicelogin",
        data={"otc": code["user_code"], "login": entra.alice.upn, "passwd": entra.alice.password},
    )
    assert ok.status_code == 200, ok.text
    tokens = entra.http.post(f"{entra.login}/organizations/oauth2/v2.0/token", data=poll)
    assert tokens.status_code == 200, tokens.text
    assert claims(tokens.json()["access_token"])["upn"] == entra.alice.upn and tokens.json()["refresh_token"]
    spent = entra.http.post(f"{entra.login}/organizations/oauth2/v2.0/token", data=poll)
    assert spent.json()["error"] == "invalid_grant"


def test_device_token_and_device_bound_user_token(entra: EntraClient, lab: Lab, tmp_path: Path) -> None:
    device = entra.join_device(tmp_path, "LAB-DEVTOKEN")
    reply = entra.device_request(device, device_token_request())
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "refresh_token" not in body and body["resource"] == CONFIGMGR
    token = verify(lab, body["access_token"], CONFIGMGR)
    listed = next(d for d in entra.devices() if d["device_id"] == device.device_id)
    assert token["idtyp"] == "device" and token["amr"] == ["rsa"] and token["deviceid"] == device.device_id
    assert token["sub"] == device.device_id and token["oid"] == listed["object_id"] and "appid" not in token
    assert token["tid"] == entra.tenant.tenant_id and token["ver"] == "1.0"

    user = entra.device_request(
        device,
        {
            "grant_type": "password",
            "client_id": CONFIGMGR_CLIENT,
            "resource": CONFIGMGR,
            "username": entra.alice.upn,
            "password": entra.alice.password,
        },
    )
    assert user.status_code == 200, user.text
    bound = verify(lab, user.json()["access_token"], CONFIGMGR)
    assert bound["deviceid"] == device.device_id and bound["amr"] == ["pwd", "rsa"]
    assert bound["upn"] == entra.alice.upn and bound["onprem_sid"] == entra.alice.onprem_sid

    # the device-bound refresh token keeps the device on refresh
    refreshed = entra.device_request(
        device,
        {
            "grant_type": "refresh_token",
            "client_id": CONFIGMGR_CLIENT,
            "resource": CONFIGMGR,
            "refresh_token": user.json()["refresh_token"],
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    assert claims(refreshed.json()["access_token"])["deviceid"] == device.device_id


def test_keys_and_directory_survive_a_restart(
    entra: EntraClient, lab: Lab, lab_services: LabProcesses, tmp_path: Path
) -> None:
    device = entra.join_device(tmp_path, "LAB-RESTART")
    kid = entra.http.get(f"{entra.login}/common/discovery/keys").json()["keys"][0]["kid"]
    counts = {k: len(entra.http.get(f"{entra.login}/_lab/{k}").json()[k]) for k in ("tenants", "users", "apps")}
    lab_services.stop("entra")
    lab_services.ensure("entra")
    assert entra.http.get(f"{entra.login}/common/discovery/keys").json()["keys"][0]["kid"] == kid
    assert {k: len(entra.http.get(f"{entra.login}/_lab/{k}").json()[k]) for k in counts} == counts
    assert any(d["device_id"] == device.device_id for d in entra.devices())
    assert entra.device_request(device, device_token_request()).status_code == 200
