"""CMGService.log's per-URI traffic summaries (seed 001):

    RequestUri: /CCM_PROXY_SERVERAUTH/72057594037937981/CCM_STS  RequestCount: 1  RequestSize: 1974 Bytes
    ResponseCount: 1  ResponseSize: 1566 Bytes  AverageElapsedTime: 218 ms

(one line). Counted per upper-cased path since the last summary, written every `interval` seconds
and once more when the CMG stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
                   Awaitable[None]]


@dataclass
class UriStats:
    request_count: int = 0
    request_size: int = 0
    response_count: int = 0
    response_size: int = 0
    elapsed_ms: float = 0.0

    def line(self, uri: str) -> str:
        average = round(self.elapsed_ms / self.request_count) if self.request_count else 0
        return (f"RequestUri: {uri}  RequestCount: {self.request_count}  RequestSize: {self.request_size} Bytes  "
                f"ResponseCount: {self.response_count}  ResponseSize: {self.response_size} Bytes  "
                f"AverageElapsedTime: {average} ms")


class TrafficStats:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.current: dict[str, UriStats] = {}

    def add(self, uri: str, request_size: int, response_size: int, responded: bool, elapsed_ms: float) -> None:
        s = self.current.setdefault(uri, UriStats())
        s.request_count += 1
        s.request_size += request_size
        s.response_count += 1 if responded else 0
        s.response_size += response_size
        s.elapsed_ms += elapsed_ms

    def flush(self) -> int:
        current, self.current = self.current, {}
        for uri in sorted(current):
            self.log.info(current[uri].line(uri))
        return len(current)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.flush()


class StatsMiddleware:
    """Counts every client request (except /_lab/) into `stats` under `uri_of(path)`."""

    def __init__(self, app: ASGIApp, stats: TrafficStats, uri_of: Callable[[str], str]) -> None:
        self.app, self.stats, self.uri_of = app, stats, uri_of

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_lab/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sizes = {"in": 0, "out": 0, "responded": 0}

        async def counting_receive() -> dict[str, Any]:
            message = await receive()
            sizes["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sizes["responded"] = 1
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            self.stats.add(self.uri_of(scope["path"]), sizes["in"], sizes["out"], bool(sizes["responded"]),
                           (time.perf_counter() - started) * 1000)
