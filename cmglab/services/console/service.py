"""`cmglab serve console`: the lab console over the lab's TLS, and the collector polling the services."""

from __future__ import annotations

import logging

from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.services.console.app import create_app
from cmglab.services.console.parts import Parts


def build(lab: Lab) -> Service:
    # the collector polls every service every second: httpx's line per request filled console.out (90 MB a day)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parts = Parts.from_lab(lab)
    ident = lab.pki.server("console")

    async def close_client() -> None:
        await parts.client.aclose()

    return Service(
        "console",
        [Listener("console", create_app(parts), lab.port("console"), lab.bind(), TLS(ident.cert_path, ident.key_path))],
        background=[parts.collector.run],
        on_stop=[close_client],
    )
