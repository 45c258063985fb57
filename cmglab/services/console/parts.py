"""The console's parts (what its routes use), built once per process from the lab: the HTTP client it
polls the services with, the trace store, the live event hub, the collector and the device view."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from cmglab.runtime.lab import Lab
from cmglab.services.console.collector import Collector
from cmglab.services.console.devices import Devices
from cmglab.services.console.events import EventHub
from cmglab.services.console.traces import TraceStore


@dataclass
class Parts:
    lab: Lab
    client: httpx.AsyncClient
    store: TraceStore
    hub: EventHub
    collector: Collector
    devices: Devices

    @classmethod
    def from_lab(cls, lab: Lab) -> Parts:
        client = lab.http_client(timeout=10)
        store, hub = TraceStore(), EventHub()
        collector = Collector(lab, client, store, hub, lab.settings.console_poll_interval)
        return cls(lab, client, store, hub, collector, Devices(lab, client, store))
