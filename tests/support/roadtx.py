"""ROADtools roadtx, the real command line and unmodified, against the lab: it hard-codes
login.microsoftonline.com and enterpriseregistration.windows.net, so it runs with those names resolved to the
lab's Entra on 443 (tests/support/resolved_names.py) and the lab CA in REQUESTS_CA_BUNDLE."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from tests.support.resolved_names import entra_on_443, namespaces_available, run_resolved, write_hosts

# roadtx(*args, cwd=DIR, ok=True): one `roadtx ARGS...` run in DIR; ok: it must succeed without a traceback
Roadtx = Callable[..., subprocess.CompletedProcess[str]]


def roadtx_fixture(name: str) -> Callable[..., Any]:
    """A module-scoped fixture handing the tests a `Roadtx` (the lab's Entra started); it skips where there
    are no mount namespaces or no roadtx. `name`: the module's own folder for the hosts file."""

    @pytest.fixture(scope="module")
    def fixture(lab: Lab, lab_services: LabProcesses, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roadtx]:
        if not namespaces_available() or not shutil.which("roadtx"):
            pytest.skip("needs root, mount namespaces (unshare) and roadtx")
        lab_services.ensure("entra")
        with entra_on_443(lab) as addr:
            hosts = write_hosts(tmp_path_factory.mktemp(name) / "hosts", addr, lab.config.hosts.entra)

            def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
                done = run_resolved(
                    ["roadtx", *args], hosts=hosts, cwd=cwd, env={"REQUESTS_CA_BUNDLE": str(lab.pki.ca_bundle)}
                )
                if ok:
                    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
                return done

            yield run

    return fixture
