"""Attacks on the listeners themselves, over raw sockets (a client library would refuse to send these bytes):
a request line and a head past their caps, a body past its cap (declared, and chunked), heads begun and never
finished, TCP connections that never say ClientHello, and a flood of them with a real client in the middle.
Each must be refused while reading (414/431/413/408, or closed), and leave nothing open behind it: checked by
the attacks' own connections (`released`: the service neither holds nor queues a connection from one of their
ports to the listener's port), never by the service's descriptor or socket total, which its own work changes
meanwhile (a thread's first database connection, a keep-alive client, the connection pool).

Used by the reliability campaign (`make reliability`) and by tests/test_listener_limits.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cmglab.runtime.lab import Lab
from cmglab.wire import httpclient

# the limits a campaign lab runs with: small, so that each attack is cheap
ENV = {
    "CMGLAB_MAX_URL_BYTES": "4096",
    "CMGLAB_MAX_HEADER_BYTES": "16384",
    "CMGLAB_HEAD_TIMEOUT": "1",
    "CMGLAB_TLS_HANDSHAKE_TIMEOUT": "1",
    "CMGLAB_MAX_HANDSHAKES": "40",
}
MAX_BODY = 1024 * 1024  # CMGLAB_MAX_BODY_BYTES for the chunked-body attack (the campaign's own cap may be larger)


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
        Target("cmg-connection-point", "cmg-connection-point", p.cmg_connection_point, h.cmg_connection_point, False),
        Target("console", "console", p.console, h.console, True),
        Target("distribution-point", "distribution-point", p.distribution_point, h.distribution_point, True),
        Target("distribution-point-http", "distribution-point", p.distribution_point_http, h.distribution_point, False),
    ]


# handshakes tried per connection: a loaded machine may take longer than the 1 s handshake timeout these labs
# run with (CMGLAB_TLS_HANDSHAKE_TIMEOUT), and the attacks are on what comes after the handshake
HANDSHAKE_TRIES = 3


def connect(
    lab: Lab, t: Target, cert: tuple[Path, Path] | None, timeout: float = 10, ports: list[int] | None = None
) -> socket.socket:
    """A connection to T; the local port of each connection made (the service's peer) is added to PORTS when
    given."""
    ctx = ssl.create_default_context(cafile=str(lab.pki.ca_bundle))
    if t.listener == "cmg-connector":
        # it keeps only its connection points' and the lab admin's connections past the handshake (a device's is
        # dropped there): these attacks on what comes after are sent with the admin's (as if it had leaked)
        cert = (lab.pki.lab_admin.cert_path, lab.pki.lab_admin.key_path)
    if cert:  # the connector listener wants one; the others take it or leave it
        ctx.load_cert_chain(*map(str, cert))
    for tries_left in reversed(range(HANDSHAKE_TRIES)):
        raw = socket.create_connection(("127.0.0.1", t.port), timeout=timeout)
        if ports is not None:
            ports.append(raw.getsockname()[1])
        if not t.tls:
            return raw
        try:
            return ctx.wrap_socket(raw, server_hostname=t.host)
        except (ssl.SSLEOFError, ConnectionResetError):  # the server gave up on the handshake
            raw.close()
            if not tries_left:
                raise
    raise AssertionError("unreachable")


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes (a refusal always closes)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, ssl.SSLError, TimeoutError):
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


def status(answer: bytes) -> int | None:
    return int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") and answer[9:12].isdigit() else None


def long_url(lab: Lab, t: Target, cert: tuple[Path, Path] | None, ports: list[int] | None = None) -> int | None:
    with connect(lab, t, cert, ports=ports) as s:
        return status(
            send_then_read(s, b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\n\r\n")
        )


def oversized_head(lab: Lab, t: Target, cert: tuple[Path, Path] | None, ports: list[int] | None = None) -> int | None:
    head = b"POST /x HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\n"
    with connect(lab, t, cert, ports=ports) as s:
        return status(send_then_read(s, head + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(20))))


def declared_body(lab: Lab, t: Target, cert: tuple[Path, Path] | None, ports: list[int] | None = None) -> int | None:
    with connect(lab, t, cert, ports=ports) as s:
        return status(
            send_then_read(
                s, b"POST /anything HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\nContent-Length: 268435456\r\n\r\n"
            )
        )


def chunked_body(
    lab: Lab, t: Target, cert: tuple[Path, Path] | None, method: bytes, path: bytes, cap: int = MAX_BODY
) -> int | None:
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    with connect(lab, t, cert) as s:
        s.sendall(
            method
            + b" "
            + path
            + b" HTTP/1.1\r\nHost: "
            + t.host.encode()
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        return status(send_then_read(s, chunk * (cap // 65536 + 8)))


def tiny_chunks(
    lab: Lab, t: Target, cert: tuple[Path, Path] | None, method: bytes, path: bytes, count: int = 1_000_000
) -> int | None:
    """COUNT one-byte chunks (a body under the byte cap, past the chunk cap): each costs the parser a callback."""
    head = method + b" " + path + b" HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    with connect(lab, t, cert) as s:
        return status(send_then_read(s, head + b"1\r\nx\r\n" * count + b"0\r\n\r\n"))


@dataclass(frozen=True)
class HalfSent:
    answers: list[int | None]
    ports: list[int]  # the attack's own ends of its connections (the server's peers)


def half_sent_heads(lab: Lab, t: Target, cert: tuple[Path, Path] | None, count: int = 20) -> HalfSent:
    socks = [connect(lab, t, cert) for _ in range(count)]
    try:
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\nX-Slow: ")
        return HalfSent([status(read_all(s)) for s in socks], [s.getsockname()[1] for s in socks])
    finally:
        for s in socks:
            s.close()


def silent_connection_closed_in(t: Target, limit: float = 8, ports: list[int] | None = None) -> float | None:
    """Seconds until the server closed a connection that sent nothing (None: still open after `limit`)."""
    with socket.create_connection(("127.0.0.1", t.port), timeout=limit) as s:
        if ports is not None:
            ports.append(s.getsockname()[1])
        started = time.monotonic()
        try:
            s.recv(1)
        except TimeoutError:
            return None
        except OSError:
            pass
        return time.monotonic() - started


def real_client_ok(lab: Lab, service: str) -> bool:
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle)
    try:
        with httpclient.client(ctx=ctx, resolve=lab.resolve(), timeout=10) as c:
            return c.get(f"{lab.url(service)}/_lab/health").status_code == 200
    except Exception:  # any failure is the finding
        return False


@dataclass
class Flood:
    held_max: int  # the most of the flood's connections the service held open at once (sampled)
    real_client_served: bool
    ports: list[int]  # the flood's own ends of its connections (the service's peers)


# how far past its handshake cap a service may hold a flood's connections for a moment: one dropped for a
# newcomer is closed when its cancelled handshake task next runs, after a burst of accepts
FLOOD_SLACK = 20


def handshake_flood(lab: Lab, t: Target, pid: int, count: int = 1000) -> Flood:
    """COUNT connections that never say ClientHello; a real client in the middle of them. How many of them the
    service holds is read by their own ports (`held_peers`), every 100 connections and at the end."""
    flood: list[socket.socket] = []
    ports: list[int] = []
    served, most = False, 0
    try:
        for i in range(count):
            flood.append(socket.create_connection(("127.0.0.1", t.port), timeout=10))
            ports.append(flood[-1].getsockname()[1])
            if i == count // 2:
                served = real_client_ok(lab, t.service)
            if i % 100 == 0:
                most = max(most, len(held_peers(pid, ports, t.port)))
        most = max(most, len(held_peers(pid, ports, t.port)))
    finally:
        for s in flood:
            s.close()
    return Flood(most, served, ports)


def _tcp_rows(pid: int) -> Iterator[list[str]]:
    """The fields of each TCP socket's row in process PID's network namespace (/proc/PID/net/tcp, tcp6)."""
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as rows:
            for row in list(rows)[1:]:
                yield row.split()


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def _peer_rows(pid: int, peers: list[int], at: int | None) -> Iterator[tuple[int, str, str]]:
    """(peer port, state, inode) of each TCP socket in process PID's network namespace whose remote end is one
    of the local ports PEERS and, given AT, whose own end is port AT (the listener they connected to: a peer
    port let go may be taken at once by another connection, to another port or another server)."""
    wanted = set(peers)
    for f in _tcp_rows(pid):
        if (port := _port(f[2])) in wanted and (at is None or _port(f[1]) == at):
            yield port, f[3], f[9]


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process PID has open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while we looked
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def held_peers(pid: int, peers: list[int], at: int | None = None) -> list[str]:
    """The TCP connections process PID still holds open to one of the local ports PEERS (on its port AT when
    given), as `port state` (the process's own descriptors matched by inode against its network namespace's
    socket tables)."""
    inodes = socket_inodes(pid)
    return [
        f"{port} {TCP_STATES.get(state, state)}" for port, state, inode in _peer_rows(pid, peers, at) if inode in inodes
    ]


def listens_itself(pid: int, port: int) -> bool:
    """Whether process PID itself listens on PORT (by inode, as `held_peers`): a connection to the port would
    also succeed if another program had taken it."""
    inodes = socket_inodes(pid)
    return any(f[3] == "0A" and _port(f[1]) == port and f[9] in inodes for f in _tcp_rows(pid))


TCP_STATES = {
    "01": "ESTABLISHED",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
}


def settle(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def unreleased(pid: int, ports: list[int], at: int | None = None) -> list[str]:
    """The connections from PORTS (to port AT when given) that process PID holds, as `port state`, or that still
    wait in its accept queue, as `port state (not accepted)`: established or closed by the client, and in no
    descriptor yet (inode 0); it could accept one later and keep it. One read of the table, then the
    descriptors: a connection accepted in between is seen held (its descriptor is in place once its inode is
    in the table, but for the instant accept() takes), never missed between two reads."""
    rows = list(_peer_rows(pid, ports, at))
    inodes = socket_inodes(pid)
    found = []
    for port, state, inode in rows:
        if inode in inodes:
            found.append(f"{port} {TCP_STATES.get(state, state)}")
        elif inode == "0" and state in ("01", "08"):
            found.append(f"{port} {TCP_STATES[state]} (not accepted)")
    return found


def released(pid: int, ports: list[int], at: int | None = None, timeout: float = 20) -> bool:
    """Whether, within TIMEOUT, none of the connections from PORTS (to port AT when given) is held by process
    PID or waits for it: on two reads in a row (the instant of an accept() between the table and the descriptors
    cannot hide a connection twice)."""
    return settle(lambda: not unreleased(pid, ports, at) and not unreleased(pid, ports, at), timeout)


@dataclass(frozen=True)
class Outcome:
    listener: str
    service: str
    attack: str
    ok: bool
    detail: str = ""


def campaign(lab: Lab, pids: dict[str, int], cert: tuple[Path, Path] | None) -> Iterator[Outcome]:
    """Every attack on every listener; PIDS: each service's process, whose hold on the attacks' connections is
    read by their ports."""
    for t in targets(lab):
        ports: list[int] = []  # every attack connection's own end
        for attack, run, want in (
            ("request line over the cap", long_url, 414),
            ("head over the cap", oversized_head, 431),
            ("declared body over the cap", declared_body, 413),
        ):
            got = run(lab, t, cert, ports)
            yield Outcome(t.listener, t.service, attack, got == want, f"answered {got}, expected {want}")
        half = half_sent_heads(lab, t, cert)
        ports += half.ports
        answers = half.answers
        yield Outcome(t.listener, t.service, "half-sent heads", set(answers) == {408}, f"answered {set(answers)}")
        if t.tls:
            took = silent_connection_closed_in(t, ports=ports)
            yield Outcome(
                t.listener,
                t.service,
                "no ClientHello",
                took is not None,
                f"closed after {took:.1f} s" if took is not None else "still open after 8 s",
            )
        pid = pids[t.service]
        closed = released(pid, ports, t.port)
        yield Outcome(
            t.listener,
            t.service,
            "none of the attacks' connections held afterwards",
            closed,
            f"{len(ports)} connections, still held: {unreleased(pid, ports, t.port) or 'none'}",
        )
    cmg = next(t for t in targets(lab) if t.listener == "cmg")
    flood = handshake_flood(lab, cmg, pids["cmg"])
    cap = int(ENV["CMGLAB_MAX_HANDSHAKES"])
    yield Outcome(
        "cmg",
        "cmg",
        "1,000 connections without ClientHello, a real client among them",
        flood.real_client_served and flood.held_max <= cap + FLOOD_SLACK,
        f"real client served: {flood.real_client_served}; at most {flood.held_max} of the flood held at once "
        f"(cap {cap})",
    )
    closed = released(pids["cmg"], flood.ports, cmg.port)
    held = unreleased(pids["cmg"], flood.ports, cmg.port)
    yield Outcome("cmg", "cmg", "none of the flood's connections held afterwards", closed, f"still held: {len(held)}")
