"""The tracing tests' helpers: a bulk token and a CCM_STS request carrying a trace."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from cmglab.runtime.lab import Lab
from cmglab.wire.tracing import TraceContext
from tests.support.cmg import proxy_url
from tests.support.lab import lab_client
from tests.support.mp import Device


def bulk_token(lab: Lab, *, blocked: bool = False) -> str:
    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "cmglab", "bulk-token", *args, "--lab", str(lab.dir)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    created = json.loads(cli("new", "--json"))
    if blocked:
        cli("block", created["guid"])
    return str(created["token"])


def traced_sts(lab: Lab, device: Device, token: str, step: str = "ccmsts") -> tuple[httpx.Response, dict[str, str]]:
    """CCM_STS with a bulk registration token through CCM_Proxy_ServerAuth, as one traced operation."""
    headers = TraceContext.start(device.name, step)
    body = json.dumps(device.proof("BulkRegistration", token)).encode()
    with lab_client(lab) as c:
        reply = c.post(
            proxy_url(lab, "CCM_STS"),
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers},
        )
    return reply, headers
