"""Several worker processes on one listener (issue 20): `cmglab serve entra --workers 2` serves from two
processes on the same socket, each able to answer alone; stopping the first stops all; killing it outright
takes the others with it (nothing left listening); services that keep state in one process refuse --workers; several
workers are each pinned to a CPU (all their threads), unless turned off, and one worker is not."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from cmglab.core.labconfig import Ports
from cmglab.runtime import workers
from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import PORT_IN_USE_EXIT, reserve_ports
from cmglab.tools import orchestrate
from cmglab.tools.processes import LabProcesses, ServiceProcess, isolated_lab, listening_on
from cmglab.tools.reliability import transport as attack
from tests.support.lab import lab_client

AAD_POWERSHELL = "1b730954-1685-4b74-9bfd-dac224a7b894"
DRS_RESOURCE = "urn:ms-drs:enterpriseregistration.windows.net"


# not lab_fixture: a lab of its own, Entra with two worker processes, started and killed per test
@pytest.fixture(scope="module")
def workers_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return isolated_lab(tmp_path_factory.mktemp("workers") / "lab")


@pytest.fixture
def entra(workers_lab: Lab) -> Iterator[LabProcesses]:
    procs = LabProcesses(workers_lab, workers=2)
    try:
        procs.start("entra")
        yield procs
    finally:
        procs.stop_all()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return True


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def token(lab: Lab) -> int:
    """One ROPC token request on a new connection (state in the database: any worker may answer)."""
    user = lab.config.primary_tenant.users[0]
    with lab_client(lab, timeout=30) as c:
        return c.post(
            f"{lab.url('entra')}/common/oauth2/token",
            data={
                "client_id": AAD_POWERSHELL,
                "grant_type": "password",
                "resource": DRS_RESOURCE,
                "username": user.upn,
                "password": user.password,
            },
        ).status_code


def test_two_workers_serve_one_listener(workers_lab: Lab, entra: LabProcesses) -> None:
    """Each worker listens on a socket of its own (SO_REUSEPORT): the kernel spreads 32 connections over both
    (all 32 on one: odds 2^-31), and requests on new connections are all answered."""
    first = entra.procs["entra"].proc.pid
    (second,) = children(first)
    held = [socket.create_connection(("127.0.0.1", workers_lab.port("entra"))) for _ in range(32)]
    ports = [s.getsockname()[1] for s in held]
    try:
        # by the connections' own ports, not by each process's socket count, which its own work may change
        wait_until(
            lambda: sum(len(attack.held_peers(p, ports)) for p in (first, second)) >= 32, "32 connections accepted"
        )
        assert all(attack.held_peers(pid, ports) for pid in (first, second))
    finally:
        for s in held:
            s.close()
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: token(workers_lab), range(12))) == {200}
    entra.stop("entra")
    assert gone(first) and gone(second)


def cpus_of(pid: int) -> set[int]:
    """The CPUs any thread of PID may run on (each thread has a mask of its own)."""
    return {cpu for task in Path(f"/proc/{pid}/task").iterdir() for cpu in os.sched_getaffinity(int(task.name))}


def pinned_cpu(pid: int) -> int | None:
    """The one CPU every thread of PID is pinned to, or None."""
    cpus = cpus_of(pid)
    return cpus.pop() if len(cpus) == 1 else None


def test_two_workers_are_each_pinned_to_a_cpu_of_their_own(workers_lab: Lab, entra: LabProcesses) -> None:
    """Each worker's event loop and pool threads share one CPU (issue 20: spread over CPUs, they hand the GIL
    across them); with two CPUs or more, the workers' CPUs differ. Requests first, so that the pools have threads."""
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: token(workers_lab), range(8))) == {200}
    first = entra.procs["entra"].proc.pid
    (second,) = children(first)
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) > 1:
        assert [pinned_cpu(first), pinned_cpu(second)] == allowed[:2]  # Entra's share: the first CPUs
    else:
        assert cpus_of(first) == cpus_of(second) == set(allowed)


def workers_cpus(first: int) -> list[set[int]]:
    """The CPUs each worker's threads may run on: the first process's, then each other worker's."""
    return [cpus_of(pid) for pid in (first, *children(first))]


def test_pinning_workers_can_be_turned_off(workers_lab: Lab) -> None:
    """`--no-pin-workers` (serve; `cmglab up` passes it on as the environment variable) and CMGLAB_PIN_WORKERS=0."""
    allowed = os.sched_getaffinity(0)
    port = workers_lab.port("pki")
    argv = [sys.executable, "-m", "cmglab", "serve", "pki", "--workers", "2", "--no-pin-workers"]
    first = subprocess.Popen(
        [*argv, "--lab", str(workers_lab.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: listening_on(port) == 2, "two workers listening")
        assert workers_cpus(first.pid) == [allowed, allowed]
    finally:
        first.terminate()
        first.wait(15)
    wait_until(lambda: listening_on(port) == 0, "all workers gone")
    procs = LabProcesses(workers_lab, workers=2, env={"CMGLAB_PIN_WORKERS": "0"})
    try:
        assert workers_cpus(procs.start("pki").proc.pid) == [allowed, allowed]
    finally:
        procs.stop_all()


def test_one_worker_is_not_pinned(workers_lab: Lab) -> None:
    """Its threads' GIL-free work (signatures, hashing) may use every CPU."""
    procs = LabProcesses(workers_lab)
    try:
        assert workers_cpus(procs.start("pki").proc.pid) == [os.sched_getaffinity(0)]
    finally:
        procs.stop_all()


def test_a_worker_that_cannot_be_pinned_still_serves(caplog: pytest.LogCaptureFixture) -> None:
    """A CPU it may not use (taken from its set since the first process chose it; here one past the machine's): the
    worker warns and runs unpinned, where the kernel's refusal (EINVAL) once stopped it from starting."""
    before = cpus_of(os.getpid())
    with caplog.at_level(logging.WARNING, "cmglab.workers"):
        workers.pin_to(max(os.sched_getaffinity(0)) + 4096)
    assert "not pinned" in caplog.text and cpus_of(os.getpid()) == before


def test_up_passes_no_pin_workers_on(workers_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cmglab up --no-pin-workers`: its services start with CMGLAB_PIN_WORKERS=0 (what `serve` does with it: above)."""
    made: list[LabProcesses] = []

    class Refused(Exception):
        """What the recorded start raises instead of starting a service."""

    class Recorded(LabProcesses):
        def start(self, name: str, *, wait: bool = True, timeout: float = 30) -> ServiceProcess:
            made.append(self)
            raise Refused(name)  # nothing started: only how it would have been

    monkeypatch.setattr(orchestrate, "LabProcesses", Recorded)
    for pin, env in ((True, {}), (False, {"CMGLAB_PIN_WORKERS": "0"})):
        with pytest.raises(Refused):
            orchestrate.start_all(workers_lab, workers=2, pin_workers=pin)
        assert made[-1].env == env and made[-1].workers == 2


def test_workers_go_when_the_first_is_killed(workers_lab: Lab, entra: LabProcesses) -> None:
    first = entra.procs["entra"].proc.pid
    wait_until(lambda: len(children(first)) == 1, "a second worker")
    (second,) = children(first)
    entra.kill("entra")
    wait_until(lambda: gone(second), "the second worker stops with the first")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{workers_lab.port('entra')}/", verify=False)


def test_stateful_services_refuse_workers(workers_lab: Lab) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cmglab", "serve", "cmg", "--workers", "2", "--lab", str(workers_lab.dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "one process" in run.stdout + run.stderr


def test_a_second_lab_with_workers_on_the_same_port_is_refused(tmp_path: Path) -> None:
    """Workers listen with SO_REUSEPORT, which would let a second lab's workers join the same port and take
    half its connections: a lock per port refuses it, with the usual one line."""
    (port,) = reserve_ports(1)  # held here; the services below are started without it, as a user would
    lab = Lab.init(tmp_path / "lab", ports=Ports(pki=port))[0]
    argv = [sys.executable, "-m", "cmglab", "serve", "pki", "--workers", "2", "--lab", str(lab.dir)]
    env = {**os.environ, "CMGLAB_LAB_DIR": str(lab.dir)}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening_on(port) == 2, "two workers listening")
        for again in (argv, argv[:5] + argv[7:]):  # with workers, and without
            run = subprocess.run(again, env=env, capture_output=True, text=True, timeout=60)
            assert run.returncode == PORT_IN_USE_EXIT, run.stderr
            assert f"port {port}" in run.stderr and "Traceback" not in run.stderr
        assert listening_on(port) == 2
    finally:
        first.terminate()
        first.wait(15)
    wait_until(lambda: listening_on(port) == 0, "all workers gone")


def test_workers_are_settable_in_up_serve_and_compose() -> None:
    for command in ("up", "serve"):
        shown = subprocess.run(
            [sys.executable, "-m", "cmglab", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert "--workers" in shown.stdout and "--no-pin-workers" in shown.stdout, command
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is needed (Debian package docker-compose)"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [exe, "config"], cwd=root, capture_output=True, text=True, timeout=60, env={**os.environ, "CMGLAB_WORKERS": "2"}
    )
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {s for s, v in services.items() if v.get("environment", {}).get("CMGLAB_WORKERS") == "2"} >= {
        "entra",
        "management-point",
    }
    assert "CMGLAB_WORKERS" not in services["cmg"].get("environment", {})
    assert {s for s, v in services.items() if "CMGLAB_PIN_WORKERS" in v.get("environment", {})} >= {
        "entra",
        "management-point",
    }
