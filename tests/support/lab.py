"""The lab the tests share: a fresh lab on reserved ports (`new_lab`), a client as a device would have
(`lab_client`), and the one fixture factory every test module starts its services with (`lab_fixture`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cmglab.core.labconfig import SITE_SETTINGS
from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import reserve_ports
from cmglab.tools.processes import LabProcesses
from cmglab.tools.processes import isolated_lab as new_lab
from cmglab.wire import httpclient

__all__ = ["lab_client", "lab_fixture", "new_lab", "reserve_ports", "set_site", "set_site_in_lab_json"]


def lab_client(
    lab: Lab, *, cert: tuple[Path, Path] | None = None, crl_check: bool = False, timeout: float = 15
) -> httpx.Client:
    """A sync httpx client as a device would have: lab CA trusted, names mapped to loopback."""
    ctx = httpclient.ssl_context(
        ca_bundle=lab.pki.ca_bundle, client_cert=cert, crl_files=[lab.pki.crl_bundle], crl_check=crl_check
    )
    return httpclient.client(ctx=ctx, resolve=lab.resolve(), timeout=timeout)


def set_site(lab: Lab, **settings: Any) -> None:
    """Change the running site's settings (the MP's `POST /_lab/site`, admin token)."""
    with lab_client(lab) as c:
        r = c.post(
            f"{lab.url('management-point')}/_lab/site",
            json=settings,
            headers={"Authorization": f"Bearer {lab.admin_token()}"},
        )
        r.raise_for_status()


def set_site_in_lab_json(lab: Lab, **settings: Any) -> None:
    """Change site settings with `cmglab site set`: lab.json and the running site together, so that they
    outlive an MP restart."""
    names = {field: name for name, field in SITE_SETTINGS.items()}
    for field, value in settings.items():
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        subprocess.run(
            [sys.executable, "-m", "cmglab", "site", "set", names[field], text, "--lab", str(lab.dir)],
            check=True,
            capture_output=True,
        )


def _wait_until(ready: Callable[[Lab], bool], lab: Lab, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready(lab):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the lab's services were not ready ({ready.__name__}) within {timeout} s")
        time.sleep(0.1)


def lab_fixture(
    *services: str,
    autouse: bool = False,
    site: dict[str, Any] | None = None,
    site_in_lab_json: bool = False,
    prepare: Callable[[Lab], None] | None = None,
    ready: Callable[[Lab], bool] | None = None,
    session: Callable[[Lab], AbstractContextManager[Any]] | None = None,
) -> Callable[..., Any]:
    """A module-scoped fixture: the session's lab with `services` running. `services = lab_fixture("pki",
    "entra", autouse=True)` starts what a module needs; `mp = lab_fixture("management-point")` hands the lab to
    the tests that ask for `mp`. Options, all for the module and undone after it:
    - `site`: site settings applied to the running site (`POST /_lab/site`); with `site_in_lab_json`, through
      `cmglab site set` (lab.json too), for modules that restart the MP (its start seeds from lab.json);
    - `prepare(lab)`: runs before the services start (files they read at start);
    - `ready(lab)`: polled until true after they start (what a service learns later, a CMG's site config);
    - `session(lab)`: a context manager; the fixture hands its value to the tests instead of the lab
      (`entra = lab_fixture("entra", session=entra_session)` hands an `EntraClient`)."""
    apply = set_site_in_lab_json if site_in_lab_json else set_site

    @pytest.fixture(scope="module", autouse=autouse)
    def fixture(lab: Lab, lab_services: LabProcesses) -> Iterator[Any]:
        if prepare is not None:
            prepare(lab)
        lab_services.ensure(*services)
        if ready is not None:
            _wait_until(ready, lab)
        if site:
            apply(lab, **site)
        try:
            if session is None:
                yield lab
            else:
                with session(lab) as value:
                    yield value
        finally:
            if site:
                apply(lab, **{name: getattr(lab.config.site, name) for name in site})

    return fixture
