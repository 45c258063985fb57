"""Flow 8: the seed's common failures. Each: a non-zero ccmsetup exit code, the reason in ccmsetup.log,
nothing half-written (no client state, no cached token), and a re-run that succeeds once the cause is
fixed. Plus the seed's user-token fallback when the device token fails."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cmglab.core.labconfig import load_config
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from tests.support.agent import assert_lines, log_of, new_device, run
from tests.support.client import (
    CRL_CHECK_FAILED,
    CRL_OFFLINE,
    SERVICES,
    device_command,
    enrolled_then_revoked,
    fails_clean,
    install,
    installs,
    joined_device,
    new_bulk_token,
    rejoin,
)
from tests.support.lab import lab_client, lab_fixture

services = lab_fixture(*SERVICES, autouse=True)


def test_root_ca_missing(lab: Lab, tmp_path: Path) -> None:
    """README remedy: the root CA back in the device's Root store (`cmglab device repair root-ca`)."""
    device = joined_device(lab, tmp_path / "dev")
    device_command(lab, device, "break", "root-ca")
    fails_clean(
        lab,
        device,
        r"0x800B0109",
        r"not in the device's Trusted Root store",
        r"CcmSetup is exiting with return code 6",
    )
    device_command(lab, device, "repair", "root-ca")
    installs(lab, device)


def test_no_root_ca_device_joins_but_cannot_reach_the_cmg(lab: Lab, tmp_path: Path) -> None:
    """Seed 001's "Root CA not present" on the Entra path: Microsoft's names chain to a public CA every device
    trusts, so the join works; the CMG's certificate chains to the organisation's root, so ccmsetup fails."""
    device = new_device(lab.dir, tmp_path / "dev", "--no-root-ca")
    u = lab.config.primary_tenant.users[0]
    join = run(
        "cmglab.agent.dsregcmd", "/join", "--home", str(device.home), "--username", u.upn, "--password", u.password
    )
    assert join.returncode == 0, join.stdout + join.stderr
    fails_clean(lab, device, r"0x800B0109", r"not in the device's Trusted Root store")


def test_crl_unreachable_then_nocrlcheck(lab: Lab, tmp_path: Path) -> None:
    """README remedy: /nocrlcheck on the ccmsetup command line (`cmglab device break crl` shows the failure)."""
    device = joined_device(lab, tmp_path / "dev")
    device_command(lab, device, "break", "crl")
    assert not device.crl_cache.exists()  # a device that never fetched the CRLs
    fails_clean(lab, device, *CRL_OFFLINE, CRL_CHECK_FAILED)
    installs(lab, device, "/nocrlcheck")
    assert "Enabled SSL revocation check." not in log_of(device, "ccmsetup.log").split("/nocrlcheck")[-1]


def test_crl_break_then_repair(lab: Lab, tmp_path: Path) -> None:
    """`cmglab device break crl`: the CRL cannot be fetched, ccmsetup fails as seed 001's "CRL check is enabled";
    `cmglab device repair crl` (the CRL published where the device reaches it): ccmsetup installs."""
    device = joined_device(lab, tmp_path / "dev")
    hosts = device.hosts_path.read_text()
    device_command(lab, device, "break", "crl")
    assert device.hosts_path.read_text() != hosts
    fails_clean(lab, device, *CRL_OFFLINE)
    device_command(lab, device, "repair", "crl")
    assert sorted(device.hosts_path.read_text().splitlines()) == sorted(hosts.splitlines())
    installs(lab, device)


def test_crl_host_down_until_started(lab: Lab, lab_services: LabProcesses, tmp_path: Path) -> None:
    """README remedy for "CRL check is enabled": the CRL host is down (the device never fetched the CRLs), ccmsetup
    fails as the seed says; once the CRL host runs again (`cmglab serve pki`, part of `cmglab up`) it installs."""
    device = joined_device(lab, tmp_path / "dev")
    shutil.rmtree(device.crl_cache)
    lab_services.stop("pki")
    try:
        fails_clean(lab, device, *CRL_OFFLINE, CRL_CHECK_FAILED)
    finally:
        lab_services.start("pki")
    installs(lab, device)


def test_no_wpj_certificate(lab: Lab, tmp_path: Path) -> None:
    """README remedy: join again (dsregcmd /leave, dsregcmd /join), then check dsregcmd /status."""
    device = joined_device(lab, tmp_path / "dev")
    device_command(lab, device, "break", "wpj-cert")
    fails_clean(
        lab,
        device,
        r"Failed to get AAD token: this device is not Azure AD joined \(the WPJ certificate is not found\)",
        r"dsregcmd /status' and check the Device State section",
        r"dsregcmd /status",
    )
    rejoin(lab, device)
    status = run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home))
    assert re.search(r"AzureAdJoined\s*:\s*YES", status.stdout), status.stdout
    installs(lab, device)


def cmglab(lab: Lab, *args: str) -> str:
    result = run("cmglab", *args, "--lab", str(lab.dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def wait_cmg(lab: Lab, url: str, ok: Callable[[int], bool]) -> None:
    """Until the CMG answers `url` as `ok` wants: the connection point republishes the site's
    configuration with every heartbeat."""
    deadline = time.monotonic() + 4 * lab.settings.channel_heartbeat + 10
    with lab_client(lab) as c:
        while time.monotonic() < deadline:
            if ok(c.get(url).status_code):
                return
            time.sleep(0.5)
    raise AssertionError(f"the CMG did not pick up the site change ({url})")


def test_tenant_not_onboarded(lab: Lab, tmp_path: Path) -> None:
    """README remedy: `cmglab tenant onboard NAME` on the running lab."""
    other = lab.config.tenants[1]
    assert not other.onboarded
    device = joined_device(lab, tmp_path / "dev", tenant=1)
    fails_clean(
        lab,
        device,
        r"Getting AAD info from CMG '",
        rf"no AAD information for tenant {other.tenant_id}: the tenant is not onboarded",
    )
    aad_info = f"{lab.url('cmg')}/CCM_Proxy_ServerAuth/AADAuthInfo?TenantID={other.tenant_id}"
    cmglab(lab, "tenant", "onboard", other.display_name)
    try:
        assert load_config(Lab.config_path(lab.dir)).tenants[1].onboarded  # persisted, not only live
        view = json.loads(cmglab(lab, "site", "show", "--json"))
        assert next(t for t in view["tenants"] if t["tenant_id"] == other.tenant_id)["enforced"] is True
        wait_cmg(lab, aad_info, lambda status: status == 200)
        installs(lab, device)
    finally:
        cmglab(lab, "tenant", "offboard", other.display_name)
    wait_cmg(lab, aad_info, lambda status: status == 404)
    assert not load_config(Lab.config_path(lab.dir)).tenants[1].onboarded


def test_device_and_user_token_both_unavailable(lab: Lab, tmp_path: Path) -> None:
    device = joined_device(lab, tmp_path / "dev")
    # the device object is deleted in Entra (from a copy of the device): Entra refuses both tokens
    copy = tmp_path / "copy"
    shutil.copytree(device.home, copy)
    assert run("cmglab.agent.dsregcmd", "/leave", "--home", str(copy)).returncode == 0
    fails_clean(
        lab,
        device,
        r"Getting AAD \(device\) token with",
        r"Failed to get AAD token for 'S-1-5-18' from WAM API\. Error 0x",
        r"Falling back to get user '\S+' token for system\.\.\.",
        r"Getting AAD \(user\) token with: ClientId = ",
        r"Failed to get AAD \(user\) token",
        r"Failed to get a CCM token: neither a device nor a user token is available",
    )
    rejoin(lab, device)
    installs(lab, device)


def test_user_token_fallback(lab: Lab, tmp_path: Path, admin_headers: dict[str, str]) -> None:
    """Seed 001: the WAM device-token request fails, the user token is used instead."""
    device = joined_device(lab, tmp_path / "dev")
    with lab_client(lab) as c:
        r = c.post(
            f"{lab.url('entra')}/_lab/faults",
            headers=admin_headers,
            json={"path": "/oauth2/token", "method": "POST", "status": 500, "times": 1},
        )
        assert r.status_code in (200, 201), r.text
        try:
            result = install(lab, device)
        finally:
            c.delete(f"{lab.url('entra')}/_lab/faults", headers=admin_headers)
    assert result.returncode == 0, result.stderr
    assert_lines(
        device,
        "ccmsetup.log",
        r"WAM token request failed\. Status 5",
        r"Falling back to get user '\S+' token for system\.\.\.",
        r"Getting AAD \(user\) token with: ClientId = [0-9a-f-]+, ResourceUrl = \S+, AccountId = \S+",
        r"Retrieved AAD token for AAD user '[0-9a-f-]{36}'",
    )


def test_device_key_unusable_falls_back_to_the_user_token(lab: Lab, tmp_path: Path) -> None:
    """Seed 001's own sample run, by a documented command: the device key is unusable (NTE_BAD_KEYSET), WAM's
    device token fails, ccmsetup falls back to the signed-in user's token, and CCM_STS issues a UDA token."""
    device = joined_device(lab, tmp_path / "dev")
    r = run("cmglab", "device", "break", "device-key", "--home", str(device.home), "--lab", str(lab.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    result = install(lab, device)
    assert result.returncode == 0, log_of(device, "ccmsetup.log")[-3000:]
    user = lab.config.primary_tenant.users[0]
    text = log_of(device, "ccmsetup.log")
    seed_lines = [
        "WAM token request failed. Status 5, Details 'AAD WAM extension error'",
        "Failed to get AAD token..",
        "Unknown error (Error: D0090016; Source: Unknown)",
        "Failed to get AAD token for 'S-1-5-18' from WAM API. Error 0xd0090016",
        f"Falling back to get user '{user.onprem_sid}' token for system...",
        f"Retrieved AAD token for AAD user '{user.object_id}'",
    ]
    lines = text.splitlines()
    found = [next((n for n, line in enumerate(lines) if line == want), -1) for want in seed_lines]
    assert -1 not in found and found == sorted(found), (seed_lines, found, text[-3000:])
    assert_lines(
        device,
        "ccmsetup.log",
        r"^Getting AAD \(user\) token with: ClientId = [0-9a-f-]{36}, "
        r"ResourceUrl = \S+, AccountId = " + user.object_id + "$",
    )
    sts_log = (lab.dir / "logs" / "management-point" / "CCM_STS.log").read_text(errors="replace")
    assert re.search(
        rf"Validated AAD token\. TokenType: UDA TenantId: {lab.config.primary_tenant.tenant_id} "
        rf"UserId: {user.object_id} DeviceId: [0-9a-f-]{{36}}",
        sts_log,
    ), sts_log[-2000:]
    assert "TokenType is UDA" in sts_log


def test_blocked_bulk_token(lab: Lab, tmp_path: Path) -> None:
    bulk = new_bulk_token(lab)
    guid = next(v for k, v in bulk.items() if k.lower() in ("guid", "token_guid", "unique_id", "id"))
    assert run("cmglab", "bulk-token", "block", guid, "--lab", str(lab.dir)).returncode == 0
    device = new_device(lab.dir, tmp_path / "dev")
    fails_clean(
        lab, device, r"BulkTokenBlocked", r"/regtoken:<redacted \d+ characters>", extra=(f"/regtoken:{bulk['token']}",)
    )
    assert bulk["token"] not in log_of(device, "ccmsetup.log")
    assert run("cmglab", "bulk-token", "unblock", guid, "--lab", str(lab.dir)).returncode == 0
    installs(lab, device, f"/regtoken:{bulk['token']}")


def test_expired_bulk_token(lab: Lab, tmp_path: Path) -> None:
    """A token past its lifetime (minted as BulkRegistrationTokenTool would have, ten minutes ago) is refused
    at the CMG before the site sees it; a fresh one then works."""
    from cmglab.services.management_point.policy_defaults import default_policies
    from cmglab.services.management_point.store import Store

    token, guid, start, end = lab.site_signer().bulk_token(minutes=1, now=datetime.now(UTC) - timedelta(minutes=10))
    Store(lab, policy_factory=default_policies).add_bulk_token(guid, 1, start, end)
    device = new_device(lab.dir, tmp_path / "dev")
    fails_clean(lab, device, r"TokenExpired", r"/regtoken:<redacted \d+ characters>", extra=(f"/regtoken:{token}",))
    assert token not in log_of(device, "ccmsetup.log")
    installs(lab, device, f"/regtoken:{new_bulk_token(lab)['token']}")


def test_revoked_client_certificate(lab: Lab, tmp_path: Path) -> None:
    device = new_device(lab.dir, tmp_path / "dev", "--name", "REVOKED1")
    enrolled_then_revoked(lab, device)
    cmg_log = lab.dir / "logs" / "cmg" / "CMGService.log"
    seen = len(cmg_log.read_text(errors="replace"))  # the refusals of the wait above
    fails_clean(
        lab,
        device,
        r"Found a valid PKI client authentication certificate",
        r"CCM_STS refused the pki proof: 0x80072(EFD|F8F)",
        r"it refused the client authentication certificate \(revoked",
        extra=("/usepkicert",),
    )
    # ccmsetup's refusal is in a product log that `cmglab logs` shows, not only on the service's stdout
    refusal = "TLS handshake refused: client certificate failed verification: certificate revoked"
    deadline = time.monotonic() + 10
    while refusal not in cmg_log.read_text(errors="replace")[seen:]:
        assert time.monotonic() < deadline, cmg_log.read_text(errors="replace")[seen:]
        time.sleep(0.2)
    shown = run("cmglab", "logs", "cmg", "--no-follow", "--lab", str(lab.dir))
    assert shown.returncode == 0 and f"CMGService.log: {refusal}" in shown.stdout, shown.stdout[-2000:]
    # fixed: the revoked certificate replaced by a new one
    revoked = [c.thumbprint for c in device.stores.certificates("My")]
    assert run("cmglab", "device", "enrol", "--lab", str(lab.dir), "--home", str(device.home)).returncode == 0
    for thumbprint in revoked:
        device.stores.remove("My", thumbprint)
    assert len(device.stores.pki_client_certs()) == 1
    installs(lab, device, "/usepkicert")


def test_allow_cmg_off(lab: Lab, tmp_path: Path) -> None:
    """README remedy: `cmglab site set allow-cmg true` on the running lab."""
    device = joined_device(lab, tmp_path / "dev")
    sts = f"{lab.url('cmg')}/CCM_Proxy_ServerAuth/{lab.config.site.role_id}/CCM_STS"
    cmglab(lab, "site", "set", "allow-cmg", "false")
    try:
        assert load_config(Lab.config_path(lab.dir)).site.allow_cmg is False  # persisted, not only live
        wait_cmg(lab, sts, lambda status: status == 404)
        fails_clean(lab, device, r"HTTP 404", r"Allow clients to use a cloud management gateway")
    finally:
        cmglab(lab, "site", "set", "allow-cmg", "true")
    wait_cmg(lab, sts, lambda status: status != 404)
    installs(lab, device)


def test_client_setting_allow_cmg_off(lab: Lab, tmp_path: Path) -> None:
    """Seed 003: with the client setting "Allow clients to use a cloud management gateway" off, a client does not
    use the CMG whatever token it holds; the setting reaches it by policy (`cmglab site set client-allow-cmg`)."""
    device = joined_device(lab, tmp_path / "dev")
    installs(lab, device)
    cmglab(lab, "site", "set", "client-allow-cmg", "false")
    try:
        first = run("cmglab.agent.ccmexec", "--home", str(device.home))  # through the CMG: gets the new policy
        assert first.returncode == 0, first.stdout + first.stderr
        assert_lines(
            device, "PolicyAgent.log", r"Client setting 'Allow clients to use a cloud management gateway' is now off"
        )
        second = run("cmglab.agent.ccmexec", "--home", str(device.home))
        assert second.returncode == 1
        assert_lines(
            device,
            "LocationServices.log",
            r"'Allow clients to use a cloud management gateway' is off: "
            r"the client does not use the cloud management gateway",
        )
    finally:
        cmglab(lab, "site", "set", "client-allow-cmg", "true")


def test_public_ca_client_certificate_is_refused(lab: Lab, tmp_path: Path) -> None:
    """The public CA that Microsoft's names chain to is trusted by devices, never as a client-certificate issuer
    for the site: a client certificate it issued is refused at the MP's TLS handshake."""

    from cmglab.pki import builders as b
    from cmglab.wire import httpclient

    public = lab.pki.public_root_ca
    key = b.new_key()
    cert = b.leaf(
        key.public_key(), b.name("PUBLIC01"), public.cert(), public.key(), ekus=[b.CLIENT_AUTH], san=["PUBLIC01"]
    )
    cert_file, key_file = tmp_path / "client.crt", tmp_path / "client.key"
    cert_file.write_bytes(b.cert_pem(cert))
    key_file.write_bytes(b.key_pem(key))
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=(cert_file, key_file))
    client_auth = lab.dir / "logs" / "management-point" / "ClientAuth.log"
    seen = len(client_auth.read_text(errors="replace")) if client_auth.exists() else 0
    with httpclient.client(ctx=ctx, resolve=lab.resolve(), timeout=10) as c, pytest.raises(httpx.HTTPError):
        c.get(f"{lab.url('management-point')}/SMS_MP/.sms_aut?MPLIST")
    # the refusal is in the MP's ClientAuth.log, which `cmglab logs` follows, not only on the process's stdout
    deadline = time.monotonic() + 10
    while "TLS handshake refused: client certificate failed verification" not in (
        client_auth.read_text(errors="replace")[seen:] if client_auth.exists() else ""
    ):
        assert time.monotonic() < deadline, "ClientAuth.log lacks the refused handshake"
        time.sleep(0.2)
    with lab_client(lab) as c:  # without the certificate the same request is served
        assert c.get(f"{lab.url('management-point')}/SMS_MP/.sms_aut?MPLIST").status_code == 200


def test_no_connection_point_is_503_until_it_comes_back(lab: Lab, lab_services: LabProcesses) -> None:
    """README remedy for "the CMG answers 503": `cmglab status` names the connection point that is down; once it
    runs again it dials the CMG by itself and the CMG answers again."""
    url = f"{lab.url('cmg')}/CCM_Proxy_ServerAuth/{lab.config.site.role_id}/CCM_STS"
    token, *_ = lab.site_signer().bulk_token()  # a request the CMG lets through to the site

    def wait_status(ok: Callable[[int], bool]) -> None:
        deadline = time.monotonic() + 4 * lab.settings.channel_heartbeat + 20
        seen = None
        with lab_client(lab) as c:
            while time.monotonic() < deadline:
                seen = c.post(
                    url, content=b'{"ProofType":"BulkRegistration"}', headers={"Authorization": f"Bearer {token}"}
                ).status_code
                if ok(seen):
                    return
                time.sleep(0.5)
        raise AssertionError(f"the CMG still answers {seen}")

    lab_services.stop("cmg-connection-point")
    try:
        wait_status(lambda status: status == 503)
        status = run("cmglab", "status", "--json", "--lab", str(lab.dir))
        assert status.returncode == 1
        assert json.loads(status.stdout)["cmg-connection-point"]["health"] != "healthy"
    finally:
        lab_services.start("cmg-connection-point")
    wait_status(lambda status: status != 503)
