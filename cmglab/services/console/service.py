"""`cmglab serve console`: the lab console over the lab's TLS, and the collector polling the services."""

from __future__ import annotations

from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.services.console.app import Console, create_app
from cmglab.services.console.collector import Collector
from cmglab.services.console.devices import Devices
from cmglab.services.console.events import EventHub
from cmglab.services.console.traces import TraceStore


def build(lab: Lab) -> Service:
    client = lab.http_client(timeout=10)
    store, hub = TraceStore(), EventHub()
    collector = Collector(lab, client, store, hub, lab.settings.console_poll_interval)
    console = Console(lab, client, store, hub, collector, Devices(lab, client, store))
    ident = lab.pki.server("console")

    async def close_client() -> None:
        await client.aclose()

    return Service("console",
                   [Listener("console", create_app(console), lab.port("console"), lab.bind(),
                             TLS(ident.cert_path, ident.key_path))],
                   background=[collector.run], on_stop=[close_client])
