"""Several worker processes on one listener (issue 20): `cmglab serve entra --workers 2` serves from two
processes on the same socket, each able to answer alone; stopping the first stops all; killing it outright
takes the others with it; services that keep state in one process refuse --workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses, isolated_lab
from tests.conftest import lab_client

AAD_POWERSHELL = "1b730954-1685-4b74-9bfd-dac224a7b894"
DRS_RESOURCE = "urn:ms-drs:enterpriseregistration.windows.net"


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
        return c.post(f"{lab.url('entra')}/common/oauth2/token", data={
            "client_id": AAD_POWERSHELL, "grant_type": "password", "resource": DRS_RESOURCE,
            "username": user.upn, "password": user.password}).status_code


def test_two_workers_serve_one_listener(workers_lab: Lab, entra: LabProcesses) -> None:
    first = entra.procs["entra"].proc.pid
    wait_until(lambda: len(children(first)) == 1, "a second worker")
    (second,) = children(first)
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: token(workers_lab), range(12))) == {200}
    for paused in (first, second):  # the other one alone serves the listener
        os.kill(paused, signal.SIGSTOP)
        try:
            assert token(workers_lab) == 200
        finally:
            os.kill(paused, signal.SIGCONT)
    entra.stop("entra")
    assert gone(first) and gone(second)


def test_workers_go_when_the_first_is_killed(workers_lab: Lab, entra: LabProcesses) -> None:
    first = entra.procs["entra"].proc.pid
    wait_until(lambda: len(children(first)) == 1, "a second worker")
    (second,) = children(first)
    entra.kill("entra")
    wait_until(lambda: gone(second), "the second worker stops with the first")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{workers_lab.port('entra')}/", verify=False)


def test_stateful_services_refuse_workers(workers_lab: Lab) -> None:
    run = subprocess.run([sys.executable, "-m", "cmglab", "serve", "cmg", "--workers", "2",
                          "--lab", str(workers_lab.dir)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "one process" in run.stdout + run.stderr
