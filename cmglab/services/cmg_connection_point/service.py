"""`cmglab serve cmg-connection-point`: the admin listener and one outbound channel per CMG instance."""

from __future__ import annotations

import asyncio
import logging

from cmglab.runtime.lab import Lab
from cmglab.runtime.server import Listener, Service
from cmglab.services.cmg_connection_point.app import create_app
from cmglab.services.cmg_connection_point.parts import SERVICE, Parts


def build(lab: Lab) -> Service:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # config polls every heartbeat: not news
    parts = Parts.from_lab(lab)
    parts.log.info(
        f"Connection point {parts.name} starting: CMG instances "
        f"{', '.join(c.url for c in parts.channels)}; site configuration from {parts.site.url}"
    )

    async def run_channels() -> None:
        await asyncio.gather(*(c.run() for c in parts.channels))

    async def close_client() -> None:
        await parts.mp.aclose()
        await parts.upstream.aclose()

    return Service(
        SERVICE,
        [Listener(SERVICE, create_app(parts), parts.settings.port(lab), parts.settings.bind(lab))],
        background=[run_channels],
        on_stop=[close_client],
    )
