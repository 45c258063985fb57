"""Session fixtures: one fresh lab (PKI included) on free loopback ports, and its service processes,
started once per session the way `cmglab up` starts them."""

from __future__ import annotations

import signal
import ssl
import threading
from collections.abc import Iterator

import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from tests.support.lab import new_lab

_CREATE_DEFAULT_CONTEXT = ssl.create_default_context


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped with SIGTERM (a CI timeout, `timeout`, `kill`) unwinds as Ctrl-C does: pytest then runs
    the fixtures' teardown, which stops every service the run started (none outlives it)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _tls_verification_untouched() -> Iterator[None]:
    """Some third-party clients patch `ssl.create_default_context` at import (impacket's examples turn all
    verification off): that must never leak into the tests that follow and silently void their checks."""
    yield
    if ssl.create_default_context is not _CREATE_DEFAULT_CONTEXT:
        ssl.create_default_context = _CREATE_DEFAULT_CONTEXT
        pytest.fail("this test left ssl.create_default_context replaced (certificate checks off process-wide)")


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
