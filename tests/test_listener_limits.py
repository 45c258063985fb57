"""Attacks on the listeners themselves (issue 15), over raw sockets as the attack campaign sent them: heads and
URLs too long, bodies too big, heads and handshakes that never end, floods of connections that never say
ClientHello. Every listener answers 414/431/413/408 while reading, before any authentication; nothing stays
open afterwards (the services' descriptors come back to where they were) and real clients still get through."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses, isolated_lab
from tests.conftest import lab_client

LIMITS = {
    "CMGLAB_MAX_URL_BYTES": "4096", "CMGLAB_MAX_HEADER_BYTES": "16384", "CMGLAB_MAX_BODY_BYTES": "1048576",
    "CMGLAB_HEAD_TIMEOUT": "1", "CMGLAB_TLS_HANDSHAKE_TIMEOUT": "1", "CMGLAB_MAX_HANDSHAKES": "40",
    "CMGLAB_CHANNEL_HEARTBEAT": "1", "CMGLAB_CHANNEL_BACKOFF_MAX": "1",
}
SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point", "console")


@dataclass(frozen=True)
class Target:
    listener: str
    service: str
    port: int
    host: str  # the name it answers to (SNI, Host)
    tls: bool


def targets(lab: Lab) -> list[Target]:
    p, h = lab.config.ports, lab.config.hosts
    return [
        Target("entra", "entra", p.entra, h.entra[0], True),
        Target("cmg", "cmg", p.cmg, h.cmg, True),
        Target("cmg-connector", "cmg", p.cmg_connector, h.cmg, True),
        Target("management-point", "management-point", p.management_point, h.management_point, True),
        Target("management-point-http", "management-point", p.management_point_http, h.management_point, False),
        Target("pki", "pki", p.pki, h.pki, False),
        Target("cmg-connection-point", "cmg-connection-point", p.cmg_connection_point, h.cmg_connection_point,
               False),
        Target("console", "console", p.console, h.console, True),
    ]


@pytest.fixture(scope="module")
def limits_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return isolated_lab(tmp_path_factory.mktemp("limits") / "lab")


@pytest.fixture(scope="module")
def procs(limits_lab: Lab) -> Iterator[LabProcesses]:
    p = LabProcesses(limits_lab, env=dict(LIMITS))
    try:
        p.ensure(*SERVICES)
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="module")
def client_cert(limits_lab: Lab) -> tuple[Path, Path]:
    ident = limits_lab.pki.issue_client("limits-attacker")
    return ident.cert_path, ident.key_path


def connect(lab: Lab, t: Target, cert: tuple[Path, Path], timeout: float = 10) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", t.port), timeout=timeout)
    if not t.tls:
        return raw
    ctx = ssl.create_default_context(cafile=str(lab.pki.ca_bundle))
    ctx.load_cert_chain(*map(str, cert))  # the connector listener wants one; the others take it or leave it
    return ctx.wrap_socket(raw, server_hostname=t.host)


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes (a refusal always closes)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return out
        if not chunk:
            return out
        out += chunk


def send_then_read(s: socket.socket, data: bytes) -> bytes:
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass  # refused mid-send: the answer is still there to read
    return read_all(s)


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def open_fds(procs: LabProcesses, service: str) -> int:
    return len(os.listdir(f"/proc/{procs.procs[service].proc.pid}/fd"))


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def healthy(lab: Lab, t: Target) -> bool:
    with lab_client(lab, timeout=5) as c:
        service = t.service
        return c.get(f"{lab.url(service)}/_lab/health").status_code == 200


LISTENERS = ("entra", "cmg", "cmg-connector", "management-point", "management-point-http", "pki",
             "cmg-connection-point", "console")


@pytest.fixture(params=LISTENERS)
def target(request: pytest.FixtureRequest, limits_lab: Lab, procs: LabProcesses) -> Target:
    return next(t for t in targets(limits_lab) if t.listener == request.param)


def test_long_url_is_414(limits_lab: Lab, target: Target, client_cert: tuple[Path, Path]) -> None:
    with connect(limits_lab, target, client_cert) as s:
        answer = send_then_read(s, b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\nHost: " + target.host.encode() + b"\r\n\r\n")
    assert status(answer) == 414
    assert healthy(limits_lab, target)


def test_oversized_head_is_431_before_it_ends(limits_lab: Lab, target: Target,
                                                client_cert: tuple[Path, Path]) -> None:
    """Header fields that never end (the campaign sent 256 MiB): refused once the cap is passed."""
    head = b"POST /x HTTP/1.1\r\nHost: " + target.host.encode() + b"\r\n"
    with connect(limits_lab, target, client_cert) as s:
        answer = send_then_read(s, head + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(20)))
    assert status(answer) == 431


def test_body_over_the_cap_is_413_without_reading_it(limits_lab: Lab, target: Target,
                                                       client_cert: tuple[Path, Path]) -> None:
    with connect(limits_lab, target, client_cert) as s:
        answer = send_then_read(s, b"POST /anything HTTP/1.1\r\nHost: " + target.host.encode()
                                + b"\r\nContent-Length: 268435456\r\n\r\n")
    assert status(answer) == 413


@pytest.mark.parametrize("where", ["entra", "management-point-http"])
def test_chunked_body_over_the_cap_is_413_while_reading(limits_lab: Lab, procs: LabProcesses, where: str,
                                                        client_cert: tuple[Path, Path]) -> None:
    """No Content-Length to refuse on: counted as it arrives, refused past 1 MiB (the cap here), before any
    token or signature is looked at."""
    t = next(t for t in targets(limits_lab) if t.listener == where)
    method, path = ((b"POST", b"/common/oauth2/token") if where == "entra"
                    else (b"CCM_POST", b"/ccm_system/request"))
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    with connect(limits_lab, t, client_cert) as s:
        s.sendall(method + b" " + path + b" HTTP/1.1\r\nHost: " + t.host.encode()
                  + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n")
        answer = send_then_read(s, chunk * 24)  # 1.5 MiB
    assert status(answer) == 413


def test_half_sent_heads_are_closed(limits_lab: Lab, procs: LabProcesses, client_cert: tuple[Path, Path]) -> None:
    """Slowloris: many heads begun and never finished; each gets 408 after the head timeout (1 s here) and
    is closed; the service's descriptors come back."""
    for t in targets(limits_lab):
        before = open_fds(procs, t.service)
        socks = [connect(limits_lab, t, client_cert) for _ in range(20)]
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\nX-Slow: ")
        for s in socks:
            assert status(read_all(s)) == 408, t.listener
            s.close()
        wait_until(lambda t=t, before=before: open_fds(procs, t.service) <= before,  # type: ignore[misc]
                   f"{t.listener}: descriptors back to {before}")


def test_silent_connections_are_dropped_at_the_handshake_timeout(limits_lab: Lab, procs: LabProcesses) -> None:
    """TCP connections that never send a ClientHello: closed by the server after the handshake timeout."""
    for t in (t for t in targets(limits_lab) if t.tls):
        s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
        started = time.monotonic()
        assert s.recv(1) == b"", t.listener  # closed by the server, not by our timeout
        assert time.monotonic() - started < 8
        s.close()


def test_handshake_flood_leaves_room_for_real_clients(limits_lab: Lab, procs: LabProcesses) -> None:
    """1,000 connections that never say ClientHello against a CMG that keeps at most 40 waiting: it never
    holds more than that, a real client is served in the middle of the flood, and the descriptors come back."""
    t = next(t for t in targets(limits_lab) if t.listener == "cmg")
    before = open_fds(procs, "cmg")
    flood = []
    try:
        for _ in range(1000):
            flood.append(socket.create_connection(("127.0.0.1", t.port), timeout=10))
            if len(flood) == 500:
                with lab_client(limits_lab, timeout=10) as c:  # a real client, in the middle of it
                    assert c.get(f"{limits_lab.url('cmg')}/_lab/health").status_code == 200
        assert open_fds(procs, "cmg") <= before + 40 + 10
    finally:
        for s in flood:
            s.close()
    wait_until(lambda: open_fds(procs, "cmg") <= before, f"cmg descriptors back to {before}")
    with lab_client(limits_lab, timeout=10) as c:
        assert c.get(f"{limits_lab.url('cmg')}/_lab/health").status_code == 200


def test_connection_cap(tmp_path: Path) -> None:
    """Past max_connections a new connection is closed at once (not queued, not served), and served again
    when room is made; the cap counts every listener of the process."""
    lab = isolated_lab(tmp_path / "lab")
    p = LabProcesses(lab, env={"CMGLAB_MAX_CONNECTIONS": "30"})
    try:
        p.start("pki")
        held = [socket.create_connection(("127.0.0.1", lab.config.ports.pki), timeout=10) for _ in range(30)]
        extra = socket.create_connection(("127.0.0.1", lab.config.ports.pki), timeout=10)
        assert read_all(extra) == b""  # closed unanswered
        extra.close()
        for s in held:
            s.close()
        def served() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{lab.config.ports.pki}/_lab/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(served, "served again")
    finally:
        p.stop_all()
