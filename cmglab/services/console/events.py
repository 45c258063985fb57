"""Live updates for the page: the collector publishes, each open page holds one server-sent-events
stream (`GET /api/events?device=&step=`) that receives what matches its filter."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from cmglab.services.console.traces import matches

KEEPALIVE = 15.0  # seconds: a comment line keeps proxies and the browser from timing the stream out
QUEUE_MAX = 500  # a page that stops reading loses events rather than holding the console's memory


class EventHub:
    def __init__(self) -> None:
        self.subscribers: set[asyncio.Queue[tuple[str, Any]]] = set()

    def publish(self, event: str, data: Any) -> None:
        for queue in self.subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((event, data))

    async def stream(self, *, device: str = "", step: str = "") -> AsyncIterator[str]:
        """`text/event-stream` lines: `trace` events (a trace summary) that match the filter, `services`."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(QUEUE_MAX)
        self.subscribers.add(queue)
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    event, data = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if event == "trace" and (data["background"] or not matches(data, device, step)):
                    continue
                yield f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        finally:
            self.subscribers.discard(queue)
