"""`cmglab serve console`: the lab console over the lab's TLS, and the collector polling the services."""

from __future__ import annotations

from services.console.app import Console, create_app
from services.console.collector import Collector
from services.console.devices import Devices
from services.console.events import EventHub
from services.console.traces import TraceStore
from services.runtime.lab import Lab
from services.runtime.server import TLS, Listener, Service


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
