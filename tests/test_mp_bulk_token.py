"""`cmglab bulk-token` (BulkRegistrationTokenTool) and registration with a bulk token: CCM_STS
BulkRegistration proof → registration on ccm_system_tokenauth → the client's unique token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import jwt

from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from tests.support.lab import lab_fixture
from tests.support.mp import Device, ccm_post, client, https_url, lab_rows, reply_body, wait_log


def cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmglab", "bulk-token", *args, "--lab", str(lab.dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CMGLAB_LAB_DIR": str(lab.dir), "COLUMNS": "200"},
    )


def new_token(lab: Lab, lifetime: int | None = None) -> dict[str, str]:
    args = ["new", "--json"] + (["--lifetime", str(lifetime)] if lifetime else [])
    out = cli(lab, *args)
    assert out.returncode == 0, out.stderr
    data: dict[str, str] = json.loads(out.stdout)
    return data


mp = lab_fixture("management-point")


def sts(mp: Lab, bearer: str | None, doc: dict) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    with client(mp) as c:
        r = c.post(f"{https_url(mp)}/CCM_STS", json=doc, headers=headers)
    return r.status_code, r.json()


def register_with_token(mp: Lab, device: Device, ccm_token: str) -> dict[str, str]:
    with client(mp) as c:
        resp = ccm_post(
            c,
            f"{https_url(mp)}/ccm_system_tokenauth/request",
            device.registration_message(),
            {"Authorization": f"Bearer {ccm_token}"},
        )
        root = cm.parse_xml(reply_body(resp))
    if root.get("SMSID"):
        device.sms_id = root.get("SMSID")
    return dict(root.attrib)


def test_new_prints_guid_validity_and_token(mp: Lab) -> None:
    out = cli(mp, "new")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    guid = lines[0].removeprefix("Token GUID: ")
    assert "Token validity: from" in lines[1] and "(4320 minutes)" in lines[1]
    token = lines[-1]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["Type"] == "BulkRegistration" and claims["UniqueId"] == guid
    assert claims["SCCMTokenCategory"] == "SCCMPreAuthToken" and claims["exp"] - claims["nbf"] == 4320 * 60
    assert jwt.get_unverified_header(token)["x5t"]
    rows = {r["guid"]: r for r in lab_rows(mp, "bulk-tokens")}
    assert rows[guid]["lifetime_minutes"] == 4320 and rows[guid]["blocked"] is False
    assert token not in json.dumps(rows)  # the site keeps GUID and lifetime, never the token
    db = (mp.dir / "data" / "management-point.db").read_bytes()
    assert token.encode() not in db and token.split(".")[2].encode() not in db


def test_lifetime_limits(mp: Lab) -> None:
    assert json.loads(cli(mp, "new", "--json", "--lifetime", "10080").stdout)["lifetime_minutes"] == 10080
    too_long = cli(mp, "new", "--lifetime", "10081")
    assert too_long.returncode == 1 and "10080" in too_long.stdout


def test_list_block_unblock(mp: Lab) -> None:
    t = new_token(mp, 60)
    listed = json.loads(cli(mp, "list", "--json").stdout)
    assert any(r["guid"] == t["guid"] and r["lifetime_minutes"] == 60 for r in listed)
    assert cli(mp, "block", t["guid"]).returncode == 0
    assert next(r for r in json.loads(cli(mp, "list", "--json").stdout) if r["guid"] == t["guid"])["blocked"]
    assert cli(mp, "unblock", t["guid"]).returncode == 0
    assert not next(r for r in json.loads(cli(mp, "list", "--json").stdout) if r["guid"] == t["guid"])["blocked"]
    missing = cli(mp, "block", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
    table = cli(mp, "list").stdout
    assert t["guid"][:8] in table


def test_bulk_registration_end_to_end(mp: Lab) -> None:
    bulk = new_token(mp)
    device = Device("BULK01")
    status, reply = sts(mp, bulk["token"], device.proof("BulkRegistration", bulk["token"]))
    assert status == 200, reply
    assert reply["TokenType"] == "Device"
    expires = datetime.fromisoformat(reply["ExpiresOn"].replace("Z", "+00:00"))
    assert timedelta(hours=7, minutes=55) < expires - datetime.now(UTC) <= timedelta(hours=8, minutes=1)
    attrs = register_with_token(mp, device, reply["Token"])
    assert attrs["Status"] == "0" and attrs["ApprovalStatus"] == "1"
    unique = attrs["PreAuthToken"]
    claims = jwt.decode(unique, options={"verify_signature": False})
    assert claims["Type"] == "ClientToken" and claims["DeviceId"] == device.sms_id
    assert claims["exp"] - claims["nbf"] == 90 * 86400
    row = next(r for r in lab_rows(mp, "clients") if r["sms_id"] == device.sms_id)
    assert row["auth_kind"] == "bulk" and row["bulk_token_guid"] == bulk["guid"]
    wait_log(mp, "MP_RegistrationManager.log", rf"Registering device using bulk registration token {bulk['guid']}")
    wait_log(mp, "CCM_STS.log", rf"Validated bulk registration token {bulk['guid']}")
    # afterwards the client uses its own token, never the bulk token again
    status, ccm = sts(mp, unique, device.proof("ClientToken", unique))
    assert status == 200 and ccm["TokenType"] == "Device"
    assert jwt.decode(ccm["Token"], options={"verify_signature": False})["DeviceId"] == device.sms_id
    with client(mp) as c:
        resp = ccm_post(
            c,
            f"{https_url(mp)}/ccm_system_tokenauth/request",
            device.signed_message("MP_PolicyManager", device.assignments_body()),
            {"Authorization": f"Bearer {ccm['Token']}"},
        )
        assert "NAAConfig" in reply_body(resp)


def test_blocked_expired_and_foreign_bulk_tokens_are_refused(mp: Lab) -> None:
    device = Device("BULK02")
    blocked = new_token(mp)
    assert cli(mp, "block", blocked["guid"]).returncode == 0
    status, reply = sts(mp, blocked["token"], device.proof("BulkRegistration", blocked["token"]))
    assert status == 403 and reply["Error"] == "BulkTokenBlocked"
    wait_log(mp, "CCM_STS.log", rf"BulkTokenBlocked: bulk registration token {blocked['guid']} is blocked")

    signer = mp.site_signer()
    old, guid, start, end = signer.bulk_token(minutes=5, now=datetime.now(UTC) - timedelta(hours=1))
    from cmglab.services.management_point.store import Store

    Store(mp).add_bulk_token(guid, 5, start, end)  # recorded like the tool does, but long expired
    status, reply = sts(mp, old, device.proof("BulkRegistration", old))
    assert status == 401 and reply["Error"] == "TokenExpired"

    from cmglab.wire.site_tokens import SiteSigner

    foreign_signer = SiteSigner("11111111-2222-3333-4444-555555555555", signer.key, signer.cert)
    foreign, _, _, _ = foreign_signer.bulk_token()
    status, reply = sts(mp, foreign, device.proof("BulkRegistration", foreign))
    assert status == 401 and reply["Error"] == "InvalidProof"

    unknown, _, _, _ = signer.bulk_token()  # signed by the site but never recorded by the tool
    status, reply = sts(mp, unknown, device.proof("BulkRegistration", unknown))
    assert status == 401 and "not issued by this site" in reply["Reason"]
    assert not [r for r in lab_rows(mp, "clients") if r["netbios_name"] == "BULK02"]


def test_block_after_the_ccm_token_stops_registration(mp: Lab) -> None:
    bulk = new_token(mp)
    device = Device("BULK03")
    status, reply = sts(mp, bulk["token"], device.proof("BulkRegistration", bulk["token"]))
    assert status == 200
    assert cli(mp, "block", bulk["guid"]).returncode == 0
    attrs = register_with_token(mp, device, reply["Token"])
    assert attrs["Status"] == "3" and "SMSID" not in attrs
    assert not [r for r in lab_rows(mp, "clients") if r["netbios_name"] == "BULK03"]
    assert not [t for t in lab_rows(mp, "tokens") if t["kind"] == "client" and t["bulk_token_guid"] == bulk["guid"]]


def test_ccm_token_of_another_device_cannot_register_this_key(mp: Lab) -> None:
    bulk = new_token(mp)
    holder, thief = Device("BULK04"), Device("BULK05")
    status, reply = sts(mp, bulk["token"], holder.proof("BulkRegistration", bulk["token"]))
    assert status == 200
    attrs = register_with_token(mp, thief, reply["Token"])
    assert attrs["Status"] == "3"
    wait_log(mp, "MP_RegistrationManager.log", r"bound to another certificate")
