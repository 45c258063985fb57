"""CMGService.log's per-URI traffic summaries (seed 001):

    RequestUri: /CCM_PROXY_SERVERAUTH/72057594037937981/CCM_STS  RequestCount: 1  RequestSize: 1974 Bytes
    ResponseCount: 1  ResponseSize: 1566 Bytes  AverageElapsedTime: 218 ms

(one line). Counted per upper-cased path since the last summary, written every `interval` seconds
and once more when the CMG stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cmglab.wire.requests import RequestRecord


@dataclass
class UriStats:
    request_count: int = 0
    request_size: int = 0
    response_count: int = 0
    response_size: int = 0
    elapsed_ms: float = 0.0

    def line(self, uri: str) -> str:
        average = round(self.elapsed_ms / self.request_count) if self.request_count else 0
        return (
            f"RequestUri: {uri}  RequestCount: {self.request_count}  RequestSize: {self.request_size} Bytes  "
            f"ResponseCount: {self.response_count}  ResponseSize: {self.response_size} Bytes  "
            f"AverageElapsedTime: {average} ms"
        )


class TrafficStats:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.current: dict[str, UriStats] = {}

    def observe(self, uri_of: Callable[[str], str]) -> Callable[[RequestRecord], None]:
        """A recorder observer (`LabState.observers`): count each recorded client request under its URI."""

        def count(rec: RequestRecord) -> None:
            s = self.current.setdefault(uri_of(rec.path or ""), UriStats())
            s.request_count += 1
            s.request_size += rec.request_bytes
            s.response_count += 1 if rec.status else 0
            s.response_size += rec.response_bytes
            s.elapsed_ms += rec.elapsed_ms or 0.0

        return count

    def flush(self) -> int:
        current, self.current = self.current, {}
        for uri in sorted(current):
            self.log.info(current[uri].line(uri))
        return len(current)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.flush()
