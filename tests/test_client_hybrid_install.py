"""A hybrid-joined device (seed 002: AD domain join, SCP, userCertificate, Entra Connect sync, JoinType 6)
installs the ConfigMgr client through the CMG with Entra auth (seed 001), end to end over real (m)TLS; its
device token names the computer's SID, and the user-token fallback goes through the user's PRT."""

from __future__ import annotations

import re
from pathlib import Path

from cmglab.agent.ccm.state import ClientState
from cmglab.runtime.lab import Lab
from tests.support.agent import assert_lines, new_device, run
from tests.support.lab import lab_client, lab_fixture

SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")


services = lab_fixture(*SERVICES, autouse=True)


def sts_log(lab: Lab) -> str:
    path = lab.dir / "logs" / "management-point" / "CCM_STS.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_hybrid_device_installs_through_the_cmg(lab: Lab, tmp_path: Path, admin_headers: dict[str, str]) -> None:
    device = new_device(lab.dir, tmp_path / "dev", "--domain", "--name", "HYB-CMG01")
    assert run("cmglab.agent.dsregcmd", "/join", "--hybrid", "--home", str(device.home)).returncode == 1  # pending
    assert run("cmglab", "entra", "sync", "--lab", str(lab.dir)).returncode == 0
    joined = run("cmglab.agent.dsregcmd", "/join", "--hybrid", "--home", str(device.home))
    assert joined.returncode == 0, joined.stderr
    alice = lab.config.primary_tenant.users[0]
    assert (
        run(
            "cmglab.agent.dsregcmd",
            "/signin",
            "--home",
            str(device.home),
            "--username",
            alice.upn,
            "--password",
            alice.password,
        ).returncode
        == 0
    )
    cmg = f"{lab.url('cmg').removeprefix('https://')}/CCM_Proxy_MutualAuth/{lab.config.site.role_id}"
    # the first WAM device-token request fails: the user token comes through the PRT (seed 001's fallback)
    with lab_client(lab) as c:
        fault = {"path": "/oauth2/token$", "method": "POST", "status": 500, "times": 1}
        assert c.post(f"{lab.url('entra')}/_lab/faults", json=fault, headers=admin_headers).status_code == 201
        try:
            r = run(
                "cmglab.agent.ccmsetup",
                "--home",
                str(device.home),
                f"CCMHOSTNAME={cmg}",
                f"SMSSITECODE={lab.config.site.code}",
            )
        finally:
            c.delete(f"{lab.url('entra')}/_lab/faults", headers=admin_headers)
    assert r.returncode == 0, r.stderr
    assert_lines(
        device,
        "ccmsetup.log",
        r"Getting AAD info from CMG '",
        r"Falling back to get user '\S+' token for system\.\.\.",
        r"Retrieved AAD token for AAD user '[0-9a-f-]{36}'",
        r"Getting CCM Token from https://\S+/CCM_STS",
        r"CcmSetup is exiting with return code 0",
    )
    assert_lines(
        device,
        "ClientIDManagerStartup.log",
        r"Registering client using AAD auth\.",
        r"\[RegTask\] - Client is registered\. Server assigned ClientID is GUID:[0-9A-F-]{36}\. "
        r"Approval status 3",
    )
    state = ClientState.load(device)
    assert state is not None and state.installed and state.auth_mode == "aad"
    device_id = device.read_json(device.join_path)["DeviceId"]  # type: ignore[index]
    text = sts_log(lab)
    # the user token (through the PRT) names the hybrid device; the device token its computer SID
    assert re.search(rf"TokenType: UDA TenantId: \S+ UserId: [0-9a-f-]{{36}} DeviceId: {device_id} ", text)
    assert re.search(
        rf"TokenType: \w+ TenantId: \S+ UserId:\s+DeviceId: {device_id} OnPrem_UserSid:\s+"
        rf"OnPrem_DeviceSid: {re.escape(str(device.info.machine_sid))}",
        text,
    )
