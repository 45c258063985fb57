"""Polls every lab service's `/_lab/requests` (only what is new: `?after=<last seq>`) and `/_lab/health`,
feeds the records into the trace store and tells the event hub what changed.

The console reads; it never sits in a request's path, so a slow console cannot slow the lab down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from cmglab.runtime.lab import Lab
from cmglab.services.console.events import EventHub
from cmglab.services.console.traces import TraceStore

log = logging.getLogger("cmglab.console")

# the services the console watches, in the order the page lists them
WATCHED = ("entra", "cmg", "cmg-connection-point", "management-point", "distribution-point", "pki")
HEALTH_EVERY = 3.0  # seconds between health polls (requests are polled every interval)


@dataclass
class ServiceView:
    name: str
    url: str
    health: str = "unknown"
    detail: dict[str, Any] = field(default_factory=dict)
    cursor: int = 0  # the newest seq seen

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "health": self.health, "detail": self.detail}


class Collector:
    def __init__(self, lab: Lab, client: httpx.AsyncClient, store: TraceStore, hub: EventHub, interval: float) -> None:
        self.client, self.store, self.hub, self.interval = client, store, hub, interval
        self.admin = {"Authorization": f"Bearer {lab.admin_token()}"}
        self.services = {name: ServiceView(name, lab.url(name)) for name in WATCHED}
        self._health_at = 0.0

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.poll()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def poll(self) -> None:
        if time.monotonic() - self._health_at >= HEALTH_EVERY:
            self._health_at = time.monotonic()
            changed = await asyncio.gather(*(self._health(s) for s in self.services.values()))
            if any(changed):
                self.hub.publish("services", self.service_list())
        batches = await asyncio.gather(*(self._requests(s) for s in self.services.values()))
        touched = {}
        for records in batches:
            for record in reversed(records):  # oldest first: a trace's summary settles as hops arrive
                trace = self.store.add(record)
                if trace is not None:
                    touched[trace.trace_id] = trace
        for trace in touched.values():
            self.hub.publish("trace", trace.summary())

    async def _health(self, service: ServiceView) -> bool:
        before = service.health
        try:
            reply = await self.client.get(f"{service.url}/_lab/health", timeout=2)
            service.health = "healthy" if reply.status_code == 200 else f"HTTP {reply.status_code}"
            service.detail = reply.json() if reply.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as e:
            service.health, service.detail = f"down ({type(e).__name__})", {}
        return service.health != before

    async def _requests(self, service: ServiceView) -> list[dict[str, Any]]:
        try:
            # the admin token: the CMG's internet listener shows its records to the lab admin only
            reply = await self.client.get(
                f"{service.url}/_lab/requests",
                params={"after": service.cursor, "limit": 2000},
                timeout=5,
                headers=self.admin,
            )
            page = reply.json() if reply.status_code == 200 else {}
            records: list[dict[str, Any]] = page.get("requests", [])
            last_seq = int(page.get("last_seq", 0))
        except (httpx.HTTPError, ValueError, AttributeError):
            return []
        if last_seq < service.cursor:  # the service restarted and counts from 1 again
            service.cursor = 0
            return []
        service.cursor = max([service.cursor, *(int(r.get("seq") or 0) for r in records)])
        return records

    def service_list(self) -> list[dict[str, Any]]:
        return [s.public() for s in self.services.values()]
