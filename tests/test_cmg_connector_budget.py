"""The CMG's connection cap cannot lock its connection points out (issue 20: a valid connection point's channel
was once refused at the connector). CMGLAB_MAX_CONNECTIONS bounds a process' connections across its listeners;
clients on the internet-facing listener could fill it, and the connector would then close a connection point's
connection unanswered. The connector keeps connections of its own (runtime.server Listener.reserved)."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmglab.pki.builders import CLIENT_AUTH
from cmglab.pki.labpki import LAB_ADMIN, Identity
from cmglab.runtime.lab import Lab
from cmglab.services.cmg.connector import CONNECTOR_HEAD_DEADLINE, RESERVED_CONNECTIONS, ConnectorAdmission, Registry
from cmglab.tools.processes import LabProcesses, isolated_lab
from cmglab.wire import httpclient
from tests.support.cmg import FAST_ENV, channel_up, log_text, wait_for

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


@contextlib.contextmanager
def _cmg_holding(tmp_path: Path) -> Iterator[tuple[Lab, LabProcesses, list[Any]]]:
    """A lab of its own with its CMG running (FAST_ENV), and the sockets the test holds against it (_holding)."""
    lab = isolated_lab(tmp_path / "lab")
    procs = LabProcesses(lab, env=dict(FAST_ENV))
    with _holding(procs) as held:
        procs.start("cmg")
        yield lab, procs, held


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


def _connector_peer(lab: Lab, identity: Identity) -> tuple[str, int, ssl.SSLContext, str]:
    """Where and as whom a test dials the CMG's connector: the lab's CA trusted, `identity`'s certificate sent."""
    ctx = ssl.create_default_context(cafile=str(lab.pki.ca_bundle))
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    return lab.config.bind_address, lab.config.ports.cmg_connector, ctx, lab.config.hosts.cmg


def _silent_tls(host: str, port: int, ctx: ssl.SSLContext, name: str) -> ssl.SSLSocket | None:
    """A completed mutual-TLS handshake that then sends nothing (None: closed at accept, the slots being full)."""
    try:
        return ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=name)
    except (OSError, ssl.SSLError):
        return None


def test_silent_admitted_connections_do_not_hold_the_connectors_slots(tmp_path: Path) -> None:
    """connfix "what is left": completed handshakes that stay silent held the 64 reserved slots until the idle timeout
    (120 s) and the connection point could not connect. A connector connection must now send its request within
    CONNECTOR_HEAD_DEADLINE (10 s), and a silent one is dropped without waiting on a TLS close_notify it would never
    send (a close held the slot 30 s longer). A device's certificate no longer gets that far (the test below), so
    the silent peer here holds one the connector admits: the lab admin's, as if it had leaked."""
    with _cmg_holding(tmp_path) as (lab, procs, held):
        admin = lab.pki.lab_admin
        where = _connector_peer(lab, admin)
        for _ in range(RESERVED_CONNECTIONS + 8):
            s = _silent_tls(*where)
            if s is not None:
                held.append(s)
        assert len(held) >= RESERVED_CONNECTIONS, "the slots were not filled: the test proves nothing"
        procs.start("cmg-connection-point")
        wait_for(lambda: channel_up(lab), 40, "the connection point's channel while admitted peers sit silent")


def _closed_by_server(s: ssl.SSLSocket) -> bool:
    """Whether the server has closed S (a non-blocking look: TLS 1.3 session tickets alone are not a close)."""
    try:
        return s.recv(1) == b""
    except ssl.SSLWantReadError:
        return False
    except OSError:  # reset, or EOF without close_notify: the connector drops, it does not close politely
        return True


class _ReconnectingDevices:
    """The attack: THREADS threads, each keeping PER_THREAD mutual-TLS connections with a device's certificate
    open on the connector and opening a new one whenever the server has closed one (a connection closed at accept,
    the slots being full, is retried at once too)."""

    THREADS, PER_THREAD = 8, 10

    def __init__(self, where: tuple[str, int, ssl.SSLContext, str]) -> None:
        self.where, self.stop, self.attempts, self.lock = where, threading.Event(), 0, threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.THREADS)]

    def __enter__(self) -> _ReconnectingDevices:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self) -> None:
        held: list[ssl.SSLSocket] = []
        try:
            while not self.stop.is_set():
                for gone in [s for s in held if _closed_by_server(s)]:
                    held.remove(gone)
                    gone.close()
                if len(held) >= self.PER_THREAD:
                    self.stop.wait(0.02)  # a poll of its own connections: the server decides how long they live
                    continue
                with self.lock:
                    self.attempts += 1
                new = _silent_tls(*self.where)
                if new is None:  # closed at accept: the slots are full (the old connector), come back soon
                    self.stop.wait(0.02)
                    continue
                new.setblocking(False)
                held.append(new)
        finally:
            for s in held:
                s.close()


def test_device_certificates_reconnecting_in_a_loop_never_hold_the_connector(tmp_path: Path) -> None:
    """Review finding (CLOSING3 "left"): the connector's TLS takes any lab-CA client certificate, the registered
    connection point check came at the WebSocket, so a device's certificate held a connector slot until the head
    deadline (10 s) and 80 of them reconnecting in a loop kept all 64 slots: the connection point could not
    (re)connect. The connector now admits at the handshake's completion only its connection points and the lab
    admin: a device's connection is dropped at once (before it sends a byte), never counted in the reserve, and
    logged in CMGService.log (once per certificate per REFUSAL_LOG_EVERY, however often it comes back)."""
    with _cmg_holding(tmp_path) as (lab, procs, held):
        device = lab.pki.issue_client("looping-device.corp.lab.test")
        where = _connector_peer(lab, device)

        one = _silent_tls(*where)  # TLS 1.3: the client's side completes before the connector has read its certificate
        assert one is not None
        held.append(one)
        one.settimeout(CONNECTOR_HEAD_DEADLINE / 2)  # dropped at once, not at the head deadline
        try:
            assert one.recv(1) == b"", "the connector answered a device's connection"
        except TimeoutError:
            raise AssertionError("a device's connection was still open on the connector") from None
        except OSError:
            pass  # reset, or EOF without close_notify: dropped

        with _ReconnectingDevices(where) as attack:
            procs.start("cmg-connection-point")
            wait_for(lambda: channel_up(lab), 30, "the connection point's channel while devices reconnect in a loop")
            procs.stop("cmg-connection-point")  # and it reconnects through the same attack
            procs.start("cmg-connection-point")
            wait_for(lambda: channel_up(lab), 30, "the connection point's channel reconnecting through the attack")
            assert _admin_lab_requests(lab) == 200
            assert attack.attempts > 2 * _ReconnectingDevices.THREADS * _ReconnectingDevices.PER_THREAD, (
                "the attack hardly reconnected: it proves nothing"
            )
        refusals = re.findall(
            r"Rejected connection from \S+ at the connector's TLS handshake: certificate CN=looping-device\.corp"
            r"\.lab\.test[^\n]* is not a registered connection point",
            log_text(lab, "cmg", "CMGService.log"),
        )
        assert 1 <= len(refusals) < attack.attempts // 4, (len(refusals), attack.attempts)


def _admin_lab_requests(lab: Lab, cert: tuple[Path, Path] | None = None) -> int:
    """The admin's /_lab call on the connector listener: the lab admin's certificate (or CERT) and token."""
    port = lab.config.ports.cmg_connector
    admin = lab.pki.lab_admin
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert or (admin.cert_path, admin.key_path))
    with httpclient.client(ctx=ctx, resolve=[f"{lab.config.hosts.cmg}:{port}:127.0.0.1"], timeout=10) as c:
        r = c.get(
            f"https://{lab.config.hosts.cmg}:{port}/_lab/requests",
            headers={"Authorization": f"Bearer {lab.admin_token()}"},
        )
        return r.status_code


def test_a_reissued_lab_admin_certificate_is_admitted_and_the_one_before_is_not(tmp_path: Path) -> None:
    """Review 4, F5: the connector took the lab admin's thumbprint once at the CMG's start, so a certificate
    re-issued while it ran was refused (and the one before still admitted) until a restart. The admitted one is
    the certificate the file holds now: the new one gets in at once, the one before (still valid, not revoked)
    is refused at the handshake like any other non-admin certificate, and logged as such."""
    with _cmg_holding(tmp_path) as (lab, _, _):
        admin = lab.pki.lab_admin
        before = (tmp_path / "before.crt", tmp_path / "before.key")
        before[0].write_bytes(admin.cert_path.read_bytes())
        before[1].write_bytes(admin.key_path.read_bytes())
        assert _admin_lab_requests(lab) == 200
        lab.pki.issue(LAB_ADMIN, admin, [LAB_ADMIN], [CLIENT_AUTH])  # re-issued while the CMG runs
        assert admin.cert_path.read_bytes() != before[0].read_bytes()
        assert _admin_lab_requests(lab) == 200, "the re-issued admin certificate was refused"
        with pytest.raises(httpx.TransportError):  # dropped at the handshake: no reply
            _admin_lab_requests(lab, before)
        wait_for(
            lambda: "certificate CN=cmglab-lab-admin" in log_text(lab, "cmg", "CMGService.log"),
            10,
            "the refusal of the admin's certificate before the re-issue in CMGService.log",
        )


class _CountingRegistry(Registry):
    def __init__(self, lab: Lab) -> None:
        super().__init__(lab, set())
        self.looked: list[str | None] = []

    def refuse(self, cert: x509.Certificate | None) -> str | None:
        problem = super().refuse(cert)
        self.looked.append(problem)
        return problem


def test_a_certificate_refused_again_costs_no_second_signature_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review 4, F5: admission runs on the event loop, and the registry's verdict (a signature verification) was
    made again for every connection: a device reconnecting in a loop cost one each time. The verdict, a function of
    the certificate alone, is kept: each certificate is checked once; refusals and their log lines are as before
    (the device refused, once logged with the rest counted; the connection point and no certificate as ever)."""
    lab = isolated_lab(tmp_path / "lab")
    registry = _CountingRegistry(lab)
    admission = ConnectorAdmission.of(lab, registry, logging.getLogger("cmglab.test.connector"))
    device = lab.pki.issue_client("looping-device.corp.lab.test").cert().public_bytes(Encoding.DER)
    point = lab.pki.connection_point.cert().public_bytes(Encoding.DER)
    with caplog.at_level(logging.WARNING, logger="cmglab.test.connector"):
        for n in range(5):
            assert admission(device, f"192.0.2.7:{40000 + n}") is False
            assert admission(point, f"192.0.2.8:{40000 + n}") is True
        assert admission(None, "192.0.2.9:40000") is False
    # the device, the connection point, no certificate: each looked at once
    assert len(registry.looked) == 3, registry.looked
    assert "is not a registered connection point" in str(registry.looked[0])
    assert registry.looked[1:] == [None, "no client certificate"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Rejected connection from 192.0.2.7:40000 at the connector's TLS handshake: ")
    assert "CN=looping-device.corp.lab.test" in lines[0] and "is not a registered connection point" in lines[0]
    assert "only registered connection points and the lab admin may connect" in lines[0]
    assert "no client certificate" in lines[1]


def test_a_connection_point_revoked_while_the_cmg_runs_is_refused_though_its_verdict_is_kept(tmp_path: Path) -> None:
    """Review 6 (a guard for the kept verdicts above): the connector keeps the registry's verdict on a connection
    point's certificate, but revocation is the TLS's, checked at every handshake against the CRL as it is now.
    Admitted (its verdict kept), then revoked while the CMG runs: its next connection is refused, and the CRL
    refusal is in CMGService.log."""
    with _cmg_holding(tmp_path) as (lab, _, held):
        point = lab.pki.connection_point
        where = _connector_peer(lab, point)
        for _ in range(2):  # admitted, the second time by the kept verdict
            held.append(_tls_client(*where))
        assert lab.pki.revoke(format(point.cert().serial_number, "x"))
        with pytest.raises((OSError, ssl.SSLError)):  # refused at the handshake, or dropped before any reply
            held.append(_tls_client(*where))
        wait_for(
            lambda: "revoked" in log_text(lab, "cmg", "CMGService.log"),
            10,
            "the revoked connection point's refusal in CMGService.log",
        )
