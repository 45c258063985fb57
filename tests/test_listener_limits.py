"""Attacks on the listeners themselves (issue 15), over raw sockets as the attack campaign sent them: heads and
URLs too long, bodies too big, heads and handshakes that never end, floods of connections that never say
ClientHello. Every listener answers 414/431/413/408 while reading, before any authentication; nothing stays
open afterwards (the services' descriptors come back to where they were) and real clients still get through.
The attacks themselves live in cmglab/tools/reliability/transport.py (the reliability campaign runs them too)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses, isolated_lab
from cmglab.tools.reliability import transport as attack
from cmglab.tools.reliability.transport import Target

LIMITS = {
    **attack.ENV,
    "CMGLAB_MAX_BODY_BYTES": str(attack.MAX_BODY),
    "CMGLAB_CHANNEL_HEARTBEAT": "1",
    "CMGLAB_CHANNEL_BACKOFF_MAX": "1",
}
SERVICES = ("pki", "entra", "management-point", "distribution-point", "cmg", "cmg-connection-point", "console")
LISTENERS = (
    "entra",
    "cmg",
    "cmg-connector",
    "management-point",
    "management-point-http",
    "pki",
    "cmg-connection-point",
    "console",
    "distribution-point",
    "distribution-point-http",
)


# not lab_fixture: a lab of its own, its services started with the small listener limits under test
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
def cert(limits_lab: Lab) -> tuple[Path, Path]:
    ident = limits_lab.pki.issue_client("limits-attacker")
    return ident.cert_path, ident.key_path


@pytest.fixture(params=LISTENERS)
def target(request: pytest.FixtureRequest, limits_lab: Lab, procs: LabProcesses) -> Target:
    return next(t for t in attack.targets(limits_lab) if t.listener == request.param)


def pid(procs: LabProcesses, service: str) -> int:
    return procs.procs[service].proc.pid


def test_long_url_is_414(limits_lab: Lab, target: Target, cert: tuple[Path, Path]) -> None:
    assert attack.long_url(limits_lab, target, cert) == 414
    assert attack.real_client_ok(limits_lab, target.service)


def test_oversized_head_is_431_before_it_ends(limits_lab: Lab, target: Target, cert: tuple[Path, Path]) -> None:
    """Header fields that never end (the campaign sent 256 MiB): refused once the cap is passed."""
    assert attack.oversized_head(limits_lab, target, cert) == 431


def test_body_over_the_cap_is_413_without_reading_it(limits_lab: Lab, target: Target, cert: tuple[Path, Path]) -> None:
    assert attack.declared_body(limits_lab, target, cert) == 413


@pytest.mark.parametrize(
    ("where", "method", "path"),
    [("entra", b"POST", b"/common/oauth2/token"), ("management-point-http", b"CCM_POST", b"/ccm_system/request")],
)
def test_chunked_body_over_the_cap_is_413_while_reading(
    limits_lab: Lab, procs: LabProcesses, where: str, method: bytes, path: bytes, cert: tuple[Path, Path]
) -> None:
    """No Content-Length to refuse on: counted as it arrives, refused past 1 MiB (the cap here), before any
    token or signature is looked at."""
    t = next(t for t in attack.targets(limits_lab) if t.listener == where)
    assert attack.chunked_body(limits_lab, t, cert, method, path) == 413


def test_half_sent_heads_are_closed(
    limits_lab: Lab, procs: LabProcesses, target: Target, cert: tuple[Path, Path]
) -> None:
    """Slowloris: heads begun and never finished; each gets 408 after the head timeout (1 s here) and is
    closed; the service's descriptors come back."""
    before = attack.open_fds(pid(procs, target.service))
    assert set(attack.half_sent_heads(limits_lab, target, cert)) == {408}
    assert attack.settle(lambda: attack.open_fds(pid(procs, target.service)) <= before)


def test_silent_connections_are_dropped_at_the_handshake_timeout(
    limits_lab: Lab, procs: LabProcesses, target: Target
) -> None:
    """TCP connections that never send a ClientHello: closed by the server after the handshake timeout."""
    if not target.tls:
        pytest.skip("plain HTTP: no handshake (a silent connection meets the idle timeout instead)")
    took = attack.silent_connection_closed_in(target)
    assert took is not None and took < 8


def test_handshake_flood_leaves_room_for_real_clients(limits_lab: Lab, procs: LabProcesses) -> None:
    """1,000 connections that never say ClientHello against a CMG that keeps at most 40 waiting: it never
    holds many more descriptors than that, a real client is served in the middle of the flood, and the
    descriptors come back."""
    cmg = next(t for t in attack.targets(limits_lab) if t.listener == "cmg")
    before = attack.open_fds(pid(procs, "cmg"))
    flood = attack.handshake_flood(limits_lab, cmg, pid(procs, "cmg"))
    assert flood.real_client_served and flood.held_fds_max <= before + 40 + 20
    assert attack.settle(lambda: attack.open_fds(pid(procs, "cmg")) <= before)
    assert attack.real_client_ok(limits_lab, "cmg")


def test_connection_cap(tmp_path: Path) -> None:
    """Past max_connections a new connection is closed at once (not queued, not served), and served again
    when room is made; the cap counts every listener of the process."""
    lab = isolated_lab(tmp_path / "lab")
    p = LabProcesses(lab, env={"CMGLAB_MAX_CONNECTIONS": "30"})
    try:
        p.start("pki")
        held = [socket.create_connection(("127.0.0.1", lab.config.ports.pki), timeout=10) for _ in range(30)]
        extra = socket.create_connection(("127.0.0.1", lab.config.ports.pki), timeout=10)
        assert attack.read_all(extra) == b""  # closed unanswered
        extra.close()
        for s in held:
            s.close()

        def served() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{lab.config.ports.pki}/_lab/health").status_code == 200
            except httpx.HTTPError:
                return False

        assert attack.settle(served)
    finally:
        p.stop_all()
