"""The device's primary refresh token (dsregcmd /join, /signin, /status, /cleanupaccounts; the ADAL
fallback's renewal rule), against the running Entra over real TLS."""

from __future__ import annotations

import re
import time
from pathlib import Path

from cmglab.agent import prt
from cmglab.agent.device import Device
from cmglab.agent.entra import EntraClient
from cmglab.agent.network import DeviceNetwork
from cmglab.runtime.lab import Lab
from tests.support.agent import messages, new_device, run
from tests.support.lab import lab_fixture

services = lab_fixture("pki", "entra", autouse=True)


def joined(lab: Lab, home: Path) -> Device:
    u = lab.config.primary_tenant.users[0]
    device = new_device(lab.dir, home)
    result = run("cmglab.agent.dsregcmd", "/join", "--home", str(home), "--username", u.upn, "--password", u.password)
    assert result.returncode == 0, result.stderr
    return device


def status(device: Device) -> str:
    return run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout


def test_join_leaves_a_sealed_prt_and_status_shows_it(lab: Lab, tmp_path: Path) -> None:
    device = joined(lab, tmp_path / "dev")
    record = prt.load(device)
    assert record is not None and prt.valid(record)
    tid = lab.config.primary_tenant.tenant_id
    assert record.authority.endswith(f"/{tid}") and record.expires_at - record.updated_at == 14 * 24 * 3600
    sealed = prt.prt_path(device).read_bytes()
    assert record.refresh_token.encode() not in sealed and bytes.fromhex(record.session_key) not in sealed
    out = status(device)
    assert re.search(r"^\s+AzureAdPrt : YES$", out, re.M), out
    assert re.search(r"^\s+AzureAdPrtUpdateTime : \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.000 UTC$", out, re.M)
    assert re.search(r"^\s+AzureAdPrtExpiryTime : \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.000 UTC$", out, re.M)
    assert re.search(rf"^\s+AzureAdPrtAuthority : https://login\.microsoftonline\.com(:\d+)?/{tid}$", out, re.M)
    assert "password" not in str(device.dpapi.load(device.wam_path, "WAM accounts"))
    log = "\n".join(messages(device.home / "Windows" / "Logs" / "dsreg.log"))
    assert "Primary refresh token acquired for" in log

    # /cleanupaccounts: no account, no PRT; /signin brings both back
    assert run("cmglab.agent.dsregcmd", "/cleanupaccounts", "--home", str(device.home)).returncode == 0
    assert re.search(r"^\s+AzureAdPrt : NO$", status(device), re.M) and prt.load(device) is None
    bob = lab.config.primary_tenant.users[1]
    wrong = run(
        "cmglab.agent.dsregcmd", "/signin", "--home", str(device.home), "--username", bob.upn, "--password", "wrong"
    )
    assert wrong.returncode == 1 and "50126" in wrong.stderr and prt.load(device) is None
    ok = run(
        "cmglab.agent.dsregcmd",
        "/signin",
        "--home",
        str(device.home),
        "--username",
        bob.upn,
        "--password",
        bob.password,
    )
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"^\s+AzureAdPrt : YES$", status(device), re.M)
    assert (again := prt.load(device)) is not None and again.upn == bob.upn


def test_prt_renewed_when_four_hours_old_and_not_before(lab: Lab, tmp_path: Path) -> None:
    device = joined(lab, tmp_path / "dev")
    record = prt.load(device)
    assert record is not None
    network = DeviceNetwork(device)
    with network.client() as http:
        client = prt.PrtClient(EntraClient(http, network.resolve))
        assert prt.fresh(device, client, record) is record  # minutes old: used as it is
        record.updated_at = int(time.time()) - prt.RENEW_AFTER - 1
        renewed = prt.fresh(device, client, record)
        assert renewed.refresh_token != record.refresh_token and renewed.session_key == record.session_key
        assert renewed.updated_at >= int(time.time()) - 5
        stored = prt.load(device)
        assert stored is not None and stored.refresh_token == renewed.refresh_token
        token = client.token(
            renewed, client_id="0b7c8ab3-9ea1-4ffa-b2b9-8ffdd944bd8b", resource="https://ConfigMgrService"
        )
        assert token.claims["deviceid"] and token.claims["upn"] == lab.config.primary_tenant.users[0].upn


def test_federated_user_joins_through_the_federation_service(lab: Lab, tmp_path: Path) -> None:
    """Seed 002, federated: the realm names the STS; WS-Trust usernamemixed gives the SAML assertion that
    Entra redeems for the DRS token and, signed with the device key, for the PRT."""
    carol = next(u for u in lab.config.primary_tenant.users if u.upn.endswith("@fed.lab.test"))
    device = new_device(lab.dir, tmp_path / "dev")
    wrong = run(
        "cmglab.agent.dsregcmd", "/join", "--home", str(device.home), "--username", carol.upn, "--password", "wrong"
    )
    assert wrong.returncode == 1 and "ID3242" in wrong.stderr, wrong.stderr
    assert not device.join_path.exists()
    ok = run(
        "cmglab.agent.dsregcmd",
        "/join",
        "--home",
        str(device.home),
        "--username",
        carol.upn,
        "--password",
        carol.password,
    )
    assert ok.returncode == 0, ok.stderr
    log = "\n".join(messages(device.home / "Windows" / "Logs" / "dsreg.log"))
    assert "Stage C: federated environment; WS-Trust sign-in at the federation service" in log
    assert "SAML assertion" in log
    out = status(device)
    assert re.search(r"^\s+AzureAdJoined : YES$", out, re.M) and re.search(r"^\s+AzureAdPrt : YES$", out, re.M)
    record = prt.load(device)
    assert record is not None and record.upn == carol.upn
