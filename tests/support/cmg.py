"""The CMG tests' helpers: fast channel settings, polling, the connection point's and the CMG's health and
records, proxied URLs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx

from cmglab.runtime.lab import Lab
from tests.support.lab import lab_client

FAST_ENV = {
    "CMGLAB_CHANNEL_HEARTBEAT": "1",
    "CMGLAB_CHANNEL_BACKOFF_MAX": "1",
    "CMGLAB_UPSTREAM_TIMEOUT": "3",
    "CMGLAB_MAX_BODY_BYTES": str(4 * 1024 * 1024),
    "CMGLAB_CMG_SUMMARY_INTERVAL": "1",
    "CMGLAB_CMG_LOG_SYNC_INTERVAL": "1",
}


def wait_for(predicate: Any, timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def cp_health(lab: Lab, port: int | None = None) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port or lab.port('cmg-connection-point')}/_lab/health"
    try:
        return httpx.get(url, timeout=2).json()
    except httpx.HTTPError:
        return {}


def channel_up(lab: Lab, port: int | None = None) -> bool:
    channels = cp_health(lab, port).get("channels") or []
    return bool(channels) and all(c["state"] == "connected" for c in channels)


def cmg_points(lab: Lab) -> list[dict[str, Any]]:
    with lab_client(lab) as c:
        return c.get(f"{lab.url('cmg')}/_lab/health").json()["connection_points"]


def proxy_url(lab: Lab, path: str, family: str = "ServerAuth") -> str:
    return f"{lab.url('cmg')}/CCM_Proxy_{family}/{lab.config.site.role_id}/{path}"


def bearer(lab: Lab) -> dict[str, str]:
    token, _ = lab.site_signer().ccm_token(token_type="Device", sms_id="GUID:11111111-2222-3333-4444-555555555555")
    return {"Authorization": f"Bearer {token}"}


def log_text(lab: Lab, service: str, name: str) -> str:
    path = lab.dir / "logs" / service / name
    return path.read_text(errors="replace") if path.exists() else ""


def log_offset(lab: Lab, service: str, name: str) -> int:
    """Where the log ends now: what a request writes after this is `log_after(..., offset)`."""
    path = lab.dir / "logs" / service / name
    return path.stat().st_size if path.exists() else 0


def log_after(lab: Lab, service: str, name: str, offset: int) -> str:
    """What the log gained since `offset` (the whole log if it was rolled over meanwhile)."""
    path = lab.dir / "logs" / service / name
    if not path.exists():
        return ""
    data = path.read_bytes()
    return (data[offset:] if len(data) >= offset else data).decode(errors="replace")


def cmg_health(lab: Lab) -> dict[str, Any]:
    with lab_client(lab) as c:
        return c.get(f"{lab.url('cmg')}/_lab/health").json()


def cmg_has_site_config(lab: Lab) -> bool:
    """The CMG holds the site's configuration (a connection point's heartbeat brought it)."""
    return bool(cmg_health(lab).get("site_config"))


def cmg_serving(lab: Lab) -> bool:
    """The CMG has a connection point's channel and the site's configuration: it can forward."""
    health = cmg_health(lab)
    return bool(health.get("connection_points")) and bool(health.get("site_config"))


def mp_requests(lab: Lab, path: str = "") -> list[dict[str, Any]]:
    with lab_client(lab) as c:
        return c.get(f"{lab.url('management-point')}/_lab/requests", params={"path": path}).json()["requests"]


def cmg_requests(lab: Lab, path: str = "") -> list[dict[str, Any]]:
    with lab_client(lab) as c:
        return c.get(
            f"{lab.url('cmg')}/_lab/requests",
            params={"path": path},  # admin only at the CMG
            headers={"Authorization": f"Bearer {lab.admin_token()}"},
        ).json()["requests"]


def cp_requests(lab: Lab) -> list[dict[str, Any]]:
    return httpx.get(f"http://127.0.0.1:{lab.port('cmg-connection-point')}/_lab/requests").json()["requests"]


def new_bulk_token(lab: Lab) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cmglab", "bulk-token", "new", "--json", "--lab", str(lab.dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(out)["token"])
