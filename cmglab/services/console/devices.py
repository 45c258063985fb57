"""The lab's devices as the console lists them, from three views of the same machines:

- Entra (`GET /_lab/devices`): joined devices (device ID, name, join type);
- the site (MP `GET /_lab/clients`, `GET /_lab/tokens`): registered clients, approval, token expiry;
  and its conflicting records (`GET /_lab/conflicts`): registrations that proposed another client's SMSID;
- the traces: device names the agent tagged its requests with, and the steps that succeeded
  (a successful `download` step means the client was installed through the gateway).

A site client is the Entra device whose ID it registered with (`aad_device_id`), else the device of the
same name.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from cmglab.runtime.lab import Lab
from cmglab.services.console.traces import TraceStore

CACHE_SECONDS = 2.0


def _latest_expiry(tokens: list[dict[str, Any]], kind: str) -> str | None:
    return max((t["expires_at"] for t in tokens if t.get("kind") == kind and t.get("expires_at")), default=None)


class Devices:
    def __init__(self, lab: Lab, client: httpx.AsyncClient, store: TraceStore) -> None:
        self.client, self.store = client, store
        self.entra, self.mp = lab.url("entra"), lab.url("management-point")
        self._cache: tuple[float, dict[str, Any]] | None = None

    async def _get(self, url: str, key: str, errors: list[str]) -> list[dict[str, Any]]:
        try:
            reply = await self.client.get(url, timeout=5)
            reply.raise_for_status()
            return list(reply.json()[key])
        except (httpx.HTTPError, ValueError, KeyError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}")
            return []

    async def list(self) -> dict[str, Any]:
        if self._cache and time.monotonic() - self._cache[0] < CACHE_SECONDS:
            return self._cache[1]
        errors: list[str] = []
        joined, clients, tokens, conflicts = await asyncio.gather(
            self._get(f"{self.entra}/_lab/devices", "devices", errors),
            self._get(f"{self.mp}/_lab/clients", "clients", errors),
            self._get(f"{self.mp}/_lab/tokens", "tokens", errors),
            self._get(f"{self.mp}/_lab/conflicts", "conflicts", errors),
        )
        result = {
            "devices": merge(joined, clients, tokens, self.store.devices()),
            "conflicts": conflicts,
            "errors": errors,
        }
        self._cache = (time.monotonic(), result)
        return result


def merge(
    joined: list[dict[str, Any]],
    clients: list[dict[str, Any]],
    tokens: list[dict[str, Any]],
    traced: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        return rows.setdefault(
            name.lower(),
            {
                "name": name,
                "entra_device_id": None,
                "joined": False,
                "join_type": None,
                "sms_id": None,
                "registered": False,
                "approval": None,
                "installed": False,
                "ccm_token_expires": None,
                "client_token_expires": None,
                "steps": {},
                "last_seen": None,
            },
        )

    by_device_id: dict[str, dict[str, Any]] = {}
    for d in joined:
        r = row(str(d.get("display_name") or d["device_id"]))
        r.update(entra_device_id=d["device_id"], joined=True, join_type=d.get("join_type"))
        by_device_id[str(d["device_id"]).lower()] = r
    for c in clients:
        name = str(c.get("netbios_name") or c["sms_id"])
        r = by_device_id.get(str(c.get("aad_device_id") or "").lower()) or row(name)
        mine = [t for t in tokens if t.get("sms_id") == c["sms_id"]]
        r.update(
            sms_id=c["sms_id"],
            registered=True,
            approval=c.get("approval"),
            installed=True,
            ccm_token_expires=_latest_expiry(mine, "ccm"),
            client_token_expires=_latest_expiry(mine, "client"),
        )
    for name, seen in traced.items():
        r = rows.get(name.lower()) or row(name)
        r.update(steps=seen["steps"], last_seen=seen["last_seen"])
        r["installed"] = r["installed"] or bool(seen["steps"].get("download"))
    return sorted(rows.values(), key=lambda r: r["name"].lower())
