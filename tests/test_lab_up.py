"""`cmglab up` as a newcomer uses it: start the lab, run the commands it prints, find seed 001's log
lines on both sides (the device's CMTrace logs and the site systems' SMS-trace logs), stop it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import handover
from cmglab.tools import orchestrate
from cmglab.tools.processes import SERVICES, isolated_lab
from tests.support.lab import lab_client


def cmglab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`cmglab ...`, handed the sockets of the ports this test process reserved (`up` passes them on)."""
    with handover("127.0.0.1") as (env, fds):
        return subprocess.run(
            [sys.executable, "-m", "cmglab", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **env},
            pass_fds=fds,
        )


@pytest.fixture(scope="module")
def up_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    lab = isolated_lab(tmp_path_factory.mktemp("up") / "lab")
    started = cmglab("up", "--detach", "--lab", str(lab.dir))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield lab, started.stdout
    finally:
        cmglab("down", "--lab", str(lab.dir))


def site_log(lab: Lab, service: str, name: str) -> str:
    path = lab.dir / "logs" / service / name
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for(pattern: str, read: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, read(), re.IGNORECASE):  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{pattern!r} never appeared"
        time.sleep(0.2)


def test_up_prints_the_commands_that_install_a_device(up_lab: tuple[Lab, str]) -> None:
    lab, output = up_lab
    flat = " ".join(output.split())
    for argv in orchestrate.device_commands(lab):
        assert " ".join(argv[:3]) in flat
    assert f"CCMHOSTNAME=cmg.lab.test:{lab.config.ports.cmg}/CCM_Proxy_MutualAuth/{lab.config.site.role_id}" in flat
    assert "cmglab down" in flat
    for argv in orchestrate.check_commands(lab):  # the README's `dsregcmd /status` and `ccmexec` lines
        assert " ".join(argv) in flat

    status = cmglab("status", "--json", "--lab", str(lab.dir))
    assert status.returncode == 0, status.stdout
    states = json.loads(status.stdout)
    assert {s: v["health"] for s, v in states.items()} == dict.fromkeys(states, "healthy")
    assert all(v["pid"] for v in states.values())


def test_the_printed_commands_install_a_device_and_both_sides_log_seed_001(
    up_lab: tuple[Lab, str], tmp_path: Path
) -> None:
    lab, _ = up_lab
    home = str(tmp_path / "device01")
    create, join, install = orchestrate.device_commands(lab, home)
    for argv in (create, join):
        run = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, f"{argv[0]}: {run.stdout}{run.stderr}"
    # seed 001's path: the WAM device token request fails once, ccmsetup falls back to the user token
    with lab_client(lab) as c:
        fault = {"path": "/oauth2/token$", "method": "POST", "status": 500, "times": 1}
        assert (
            c.post(
                f"{lab.url('entra')}/_lab/faults", json=fault, headers={"Authorization": f"Bearer {lab.admin_token()}"}
            ).status_code
            == 201
        )
    run = subprocess.run(install, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, f"ccmsetup: {run.stdout}{run.stderr}"

    logs = Path(home) / "Windows"
    ccmsetup = (logs / "ccmsetup/Logs/ccmsetup.log").read_text()
    for line in (
        "Getting AAD info from CMG '",
        r"Getting AAD \(device\) token with: ClientId = ",
        r"Falling back to get user '\S+' token",
        r"Getting AAD \(user\) token with: ClientId = ",
        r"Getting CCM Token from https://\S+/CCM_STS",
        "Cached encrypted token for 'S-1-5-18'",
        r"Received message '<SiteInfoReply SchemaVersion=\"1\.00\">",
        r"The location 'https://\S+/downloadrestservice\.svc/getcontentxmlsecure\?pid=",
        r"Installing version 5\.00\.\d+\.\d+ of the client with product code \{[0-9A-F-]{36}\}",
    ):
        assert re.search(line, ccmsetup), line
    wait_for(
        r"\[RegTask\] - Client is registered\. Server assigned ClientID is GUID:[0-9A-F-]{36}\. "
        r"Approval status 3",
        lambda: (logs / "CCM/Logs/ClientIDManagerStartup.log").read_text(),
    )

    def sts() -> str:
        return site_log(lab, "management-point", "CCM_STS.log")

    wait_for(r"Validated AAD token\. TokenType: UDA TenantId: ", sts)
    for line in (
        "ProcessRequest - Start",
        r"Incoming request URL: https://\S+/CCM_STS",
        "Issued token",
        "Return token to client",
        r"Created SCCM token, token type: UDA, hierarchyId: ",
    ):
        assert re.search(line, sts()), line
    registration = site_log(lab, "management-point", "MP_RegistrationManager.log")
    assert re.search(
        r"Registering device using AAD auth: DeviceId='[0-9a-f-]{36}\s*', TenantId='[0-9a-f-]{36}'", registration
    )
    assert re.search(r"Processing Registration request from Client 'GUID:[0-9A-F-]{36}'", registration)
    connector = site_log(lab, "cmg-connection-point", "SMS_CLOUD_PROXYCONNECTOR.log")
    assert re.search(
        r"Switched to internal URL\. Replaced '\S+/CCM_Proxy_ServerAuth/\d+/CCM_STS' in\s+'\S+' "
        r"with '\S+/CCM_STS' and got '",
        connector,
        re.IGNORECASE,
    )
    assert re.search(
        r"MessageID: [0-9a-f-]{36} RequestURI: https://\S+/CCM_STS EndpointName: CCM_STS "
        r"ResponseHeader: HTTP/1\.1 200 OK.*ElapsedTime: \d+ ms",
        connector,
    )

    logs_out = cmglab("logs", "--no-follow", "management-point", "--lab", str(lab.dir))
    assert logs_out.returncode == 0 and "CCM_STS.log: ProcessRequest - Start" in logs_out.stdout

    status, ccmexec = (
        subprocess.run(argv, capture_output=True, text=True, timeout=180)
        for argv in orchestrate.check_commands(lab, home)
    )
    assert status.returncode == 0 and re.search(r"AzureAdJoined : YES", status.stdout), status.stdout
    assert ccmexec.returncode == 0, ccmexec.stdout + ccmexec.stderr
    assert re.fullmatch(
        r"ccmexec: cycle complete: client GUID:[0-9A-F-]{36} \(approval 3, auth aad\), internet, "
        r"through the CMG cmg\.lab\.test:\d+/CCM_Proxy_MutualAuth/\d+, \d+ policies applied\n",
        ccmexec.stdout,
    ), ccmexec.stdout


def test_down_stops_everything_and_the_cmg_writes_its_traffic_summary(up_lab: tuple[Lab, str]) -> None:
    lab, _ = up_lab
    pids = orchestrate.running_pids(lab)
    down = cmglab("down", "--lab", str(lab.dir))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert orchestrate.running_pids(lab) == {}
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    summary = site_log(lab, "cmg", "CMGService.log")  # written at shutdown too
    assert re.search(
        r"RequestUri: /CCM_PROXY_SERVERAUTH/\d+/CCM_STS\s+RequestCount: \d+\s+RequestSize: \d+ Bytes"
        r"\s+ResponseCount: \d+\s+ResponseSize: \d+ Bytes\s+AverageElapsedTime: \d+ ms",
        summary,
    )
    assert cmglab("status", "--lab", str(lab.dir)).returncode == 1


def test_up_in_the_foreground_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    lab = isolated_lab(tmp_path / "lab")
    with handover("127.0.0.1") as (env, fds):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cmglab", "up", "--lab", str(lab.dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
            pass_fds=fds,
        )
    assert proc.stdout is not None
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C stops the lab" in line:
                break
        else:
            pytest.fail("".join(seen))
        pids = orchestrate.running_pids(lab)
        assert set(pids) == set(SERVICES)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
        assert orchestrate.running_pids(lab) == {}
    finally:  # never leave a lab running behind a failed test
        proc.kill()
        orchestrate.stop_pids(lab)
