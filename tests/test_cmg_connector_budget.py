"""The CMG's connection cap cannot lock its connection points out (issue 20: a valid connection point's channel
was once refused at the connector). CMGLAB_MAX_CONNECTIONS bounds a process' connections across its listeners;
clients on the internet-facing listener could fill it, and the connector would then close a connection point's
connection unanswered. The connector keeps connections of its own (runtime.server Listener.reserved)."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmglab.services.cmg.connector import RESERVED_CONNECTIONS
from cmglab.tools.processes import LabProcesses, isolated_lab
from tests.support.cmg import FAST_ENV, channel_up, wait_for

CAP = 8


@contextlib.contextmanager
def _holding(procs: LabProcesses) -> Iterator[list[Any]]:
    """The sockets a test holds against the lab: all closed, and the lab's processes stopped, also on failure."""
    held: list[Any] = []
    try:
        yield held
    finally:
        for s in held:
            with contextlib.suppress(OSError):
                s.close()
        procs.stop_all()


def _tls_client(host: str, port: int, ctx: ssl.SSLContext, name: str) -> ssl.SSLSocket:
    sock = socket.create_connection((host, port), timeout=10)
    tls = ctx.wrap_socket(sock, server_hostname=name)  # the client's side of the handshake completes here
    # one request answered: the CMG's side has completed it too (TLS 1.3: the server reads the client's Finished
    # after the client is done; a connection still in its handshake there may be dropped for a newcomer)
    tls.sendall(f"GET /_lab/health HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed before a reply")
        reply += chunk
    return tls


def test_clients_filling_the_cmg_do_not_lock_its_connection_point_out(tmp_path: Path) -> None:
    lab = isolated_lab(tmp_path / "lab")
    procs = LabProcesses(lab, env={**FAST_ENV, "CMGLAB_MAX_CONNECTIONS": str(CAP)})
    with _holding(procs) as held:
        procs.start("cmg")
        ctx = ssl.create_default_context(cafile=str(lab.pki.ca_bundle))
        where = (lab.config.bind_address, lab.port("cmg"), ctx, lab.config.hosts.cmg)
        refused = False
        for _ in range(CAP + 4):  # idle keep-alive clients until the cap refuses one (the start's checks hold some)
            try:
                held.append(_tls_client(*where))
            except (OSError, ssl.SSLError):  # closed at accept, before any TLS
                refused = True
                break
        assert refused and held, "the cap was not reached: the test proves nothing"

        procs.start("cmg-connection-point")
        wait_for(lambda: channel_up(lab), 30, "the connection point's channel while clients hold the CMG's cap")


def test_raw_sockets_flooding_the_connector_do_not_lock_its_connection_point_out(tmp_path: Path) -> None:
    """Review 3, finding 1: sockets that never send a ClientHello once filled the connector's reserve (64) and every
    connection point was closed at accept until they timed out. Only completed handshakes hold its slots now; a
    handshake waiting on the connector is dropped for a newcomer. The handshake timeout is raised past the test's
    deadline so that the flood cannot simply time out."""
    lab = isolated_lab(tmp_path / "lab")
    procs = LabProcesses(lab, env={**FAST_ENV, "CMGLAB_TLS_HANDSHAKE_TIMEOUT": "120"})
    with _holding(procs) as held:
        procs.start("cmg")
        connector = (lab.config.bind_address, lab.config.ports.cmg_connector)
        for _ in range(RESERVED_CONNECTIONS + 16):  # raw TCP, no ClientHello, held open
            held.append(socket.create_connection(connector, timeout=10))
        procs.start("cmg-connection-point")
        wait_for(lambda: channel_up(lab), 30, "the connection point's channel while raw sockets flood the connector")
        procs.stop("cmg-connection-point")  # and it reconnects through a fresh flood
        for _ in range(RESERVED_CONNECTIONS + 16):
            held.append(socket.create_connection(connector, timeout=10))
        procs.start("cmg-connection-point")
        wait_for(lambda: channel_up(lab), 30, "the connection point's channel after a second flood")


def _silent_tls(host: str, port: int, ctx: ssl.SSLContext, name: str) -> ssl.SSLSocket | None:
    """A completed mutual-TLS handshake that then sends nothing (None: closed at accept, the slots being full)."""
    try:
        return ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=name)
    except (OSError, ssl.SSLError):
        return None


def test_silent_device_certificates_do_not_hold_the_connectors_slots(tmp_path: Path) -> None:
    """connfix "what is left": the connector's TLS takes any lab-CA client certificate (a device's too); the
    registered-connection-point check comes at the WebSocket. Completed handshakes that stay silent held the 64
    reserved slots until the idle timeout (120 s) and the connection point could not connect. A connector
    connection must now send its request within CONNECTOR_HEAD_DEADLINE (10 s), and a silent one is dropped
    without waiting on a TLS close_notify it would never send (a close held the slot 30 s longer)."""
    lab = isolated_lab(tmp_path / "lab")
    procs = LabProcesses(lab, env=dict(FAST_ENV))
    with _holding(procs) as held:
        procs.start("cmg")
        device = lab.pki.issue_client("silent-device")
        ctx = ssl.create_default_context(cafile=str(lab.pki.ca_bundle))
        ctx.load_cert_chain(str(device.cert_path), str(device.key_path))
        where = (lab.config.bind_address, lab.config.ports.cmg_connector, ctx, lab.config.hosts.cmg)
        for _ in range(RESERVED_CONNECTIONS + 8):
            s = _silent_tls(*where)
            if s is not None:
                held.append(s)
        assert len(held) >= RESERVED_CONNECTIONS, "the slots were not filled: the test proves nothing"
        procs.start("cmg-connection-point")
        wait_for(lambda: channel_up(lab), 40, "the connection point's channel while device certificates sit silent")
