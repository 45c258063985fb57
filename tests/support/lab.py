"""The lab the tests share: a fresh lab on reserved ports (`new_lab`), a client as a device would have
(`lab_client`), and the one fixture factory every test module starts its services with (`lab_fixture`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import reserve_ports
from cmglab.tools.processes import LabProcesses
from cmglab.tools.processes import isolated_lab as new_lab
from cmglab.wire import httpclient

__all__ = ["lab_client", "lab_fixture", "new_lab", "reserve_ports"]


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


def lab_fixture(*services: str, autouse: bool = False, site: dict[str, Any] | None = None) -> Callable[..., Any]:
    """A module-scoped fixture: the session's lab with `services` running (and the site settings `site`
    applied for the module, restored after). `services = lab_fixture("pki", "entra", autouse=True)` starts
    what a module needs; `mp = lab_fixture("management-point")` hands the lab to the tests that ask for `mp`."""

    @pytest.fixture(scope="module", autouse=autouse)
    def fixture(lab: Lab, lab_services: LabProcesses) -> Iterator[Lab]:
        lab_services.ensure(*services)
        if site:
            set_site(lab, **site)
        yield lab
        if site:
            set_site(lab, **{name: getattr(lab.config.site, name) for name in site})

    return fixture
