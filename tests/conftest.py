"""Session fixtures: one fresh lab (PKI included) on free loopback ports, and its service processes,
started once per session the way `cmglab up` starts them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmglab.processes import LabProcesses
from services.runtime import httpclient
from services.runtime.lab import Lab
from services.runtime.labconfig import Ports


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def new_lab(path: Path) -> Lab:
    p = free_ports(7)
    ports = Ports(entra=p[0], cmg=p[1], cmg_connector=p[2], management_point=p[3],
                  management_point_http=p[4], pki=p[5], cmg_connection_point=p[6])
    lab, _ = Lab.init(path, ports=ports)
    return lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("lab") / "lab")


@pytest.fixture(scope="session")
def lab_services(lab: Lab) -> Iterator[LabProcesses]:
    """The lab's services; a test module calls `lab_services.ensure("entra", ...)` for what it needs."""
    procs = LabProcesses(lab)
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session")
def admin_headers(lab: Lab) -> dict[str, str]:
    return {"Authorization": f"Bearer {lab.admin_token()}"}


def lab_client(lab: Lab, *, cert: tuple[Path, Path] | None = None, crl_check: bool = False,
               timeout: float = 15):  # type: ignore[no-untyped-def]
    """A sync httpx client as a device would have: lab CA trusted, names mapped to loopback."""
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert,
                                 crl_files=[lab.pki.crl_bundle], crl_check=crl_check)
    return httpclient.client(ctx=ctx, resolve=lab.resolve(), timeout=timeout)
