"""Ports without races (issue 21): a lab's ports are reserved by the process that made it and handed to its
services as sockets, so nothing can take one in between; a port that is taken anyway is one line that names the
port, the service and the way out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cmglab.core.labconfig import Ports
from cmglab.runtime import sockets
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses, ServiceFailed, isolated_lab


# not lab_fixture: a lab of its own, the tests start, stop and take its ports themselves
@pytest.fixture(scope="module")
def ports_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return isolated_lab(tmp_path_factory.mktemp("ports") / "lab")


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_reserved_port_is_nobody_elses(ports_lab: Lab) -> None:
    """Between the pick and the start another program cannot bind the port (uvicorn binds as below)."""
    port = ports_lab.port("pki")
    with pytest.raises(sockets.PortInUse), socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise sockets.PortInUse("127.0.0.1", port, "another program") from e
    assert refused(port)  # reserved is not listening: nothing answers before the service starts


def test_handed_over_socket_serves_then_refuses_when_stopped(ports_lab: Lab) -> None:
    procs = LabProcesses(ports_lab)
    port = ports_lab.port("pki")
    try:
        procs.start("pki")
        assert httpx.get(f"http://127.0.0.1:{port}/_lab/health").status_code == 200
        procs.stop("pki")
        assert refused(port)  # a stopped service is refused at once, not queued behind a held socket
        procs.start("pki")  # and the port is still ours for the restart
        assert httpx.get(f"http://127.0.0.1:{port}/_lab/health").status_code == 200
    finally:
        procs.stop_all()


def test_port_clash_is_one_line(tmp_path: Path) -> None:
    """A lab started on ports another program holds: the service says which port, which service, what to do;
    no traceback; `LabProcesses` (cmglab up) passes that line on."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        lab = Lab.init(tmp_path / "lab", ports=Ports(pki=port))[0]
        run = subprocess.run(
            [sys.executable, "-m", "cmglab", "serve", "pki", "--lab", str(lab.dir)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "CMGLAB_LAB_DIR": str(lab.dir)},
        )
        assert run.returncode == sockets.PORT_IN_USE_EXIT
        line = run.stderr.strip()
        assert "Traceback" not in run.stderr and "\n" not in line
        assert f"port {port}" in line and "pki" in line and "cmglab init --free-ports" in line
        procs = LabProcesses(Lab.load(lab.dir))
        with pytest.raises(ServiceFailed) as failed:
            procs.start("pki", timeout=60)
        assert str(failed.value) == line
    finally:
        holder.close()
