"""What the campaign reads back from a running lab: each service's recorded requests and its
read-only `/_lab/*` listings, plus the process output files the services write their tracebacks to."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from cmglab.runtime.lab import Lab
from cmglab.wire import httpclient
from cmglab.wire.requests import Recorded

# the services whose inputs the campaign counts; the connection point is reached only through the CMG
SERVICES = ("entra", "cmg", "management-point", "cmg-connection-point")
# a traceback uvicorn or a background task printed: the exception escaped the service's own handling
_TRACEBACK = re.compile(rb"^Traceback \(most recent call last\):", re.MULTILINE)


def lab_http(lab: Lab, *, cert: tuple[Path, Path] | None = None, timeout: float = 20) -> httpx.Client:
    """A device-like client: the lab CA trusted, the lab's names mapped to loopback."""
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert)
    return httpclient.client(ctx=ctx, resolve=lab.resolve(), timeout=timeout)


class LabView:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.http = lab_http(lab)

    def close(self) -> None:
        self.http.close()

    def get(self, service: str, path: str, **params: Any) -> dict[str, Any]:
        # the admin token: the CMG's internet listener shows its /_lab listings to the lab admin only
        r = self.http.get(
            f"{self.lab.url(service)}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.lab.admin_token()}"},
        )
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def last_seq(self, service: str) -> int:
        return int(self.get(service, "/_lab/requests", limit=0)["last_seq"])

    def records_after(self, service: str, seq: int) -> list[Recorded]:
        """Every request the service recorded after `seq` (the campaign sizes the log to keep them all)."""
        data = self.get(service, "/_lab/requests", after=seq, limit=10**9)
        return list(data["requests"])

    def listing(self, service: str, what: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.get(service, f"/_lab/{what}")[what.replace("-", "_")]
        return rows


def process_tracebacks(lab: Lab) -> dict[str, int]:
    """Tracebacks per service in `<lab>/logs/processes/<service>.out` (what `LabProcesses` captures)."""
    out: dict[str, int] = {}
    for path in sorted((lab.dir / "logs" / "processes").glob("*.out")):
        out[path.stem] = len(_TRACEBACK.findall(path.read_bytes()))
    return out
