"""How long every request of a faults run took, on both sides, against the timeout configured for it.

Client side: each fleet device's requests go through a stopwatch transport (from the send to the last
byte of the reply, or to the failure) and are compared with the agent's `client_timeout`. Server side:
the forwarding hops record each request's time in `/_lab/requests`; the CMG waits at most
`upstream_timeout` + its margin for a connection point, the point at most `upstream_timeout` for the MP.
A killed service loses its records, so they are collected before each kill and at the end.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from cmglab.agent.device import Device
from cmglab.services.cmg.proxy import CHANNEL_MARGIN
from cmglab.tools.fleet.device import DeviceTimer, FleetNetwork, FleetPlan
from cmglab.tools.reliability.labview import LabView
from cmglab.wire.requests import Recorded

SLACK_S = 2.0  # beyond the bound: scheduling on a loaded 2-core machine, TLS set-up, reading the reply


@dataclass
class Slow:
    where: str  # "client" or the service
    what: str  # method and URL or path
    seconds: float
    bound: float


@dataclass
class RequestWatch:
    """Every device request's duration and outcome (thread-safe)."""

    bound: float  # the client timeout, seconds
    requests: int = 0
    failures: int = 0  # no reply (refused, reset, timed out, cut short)
    statuses: dict[int, int] = field(default_factory=dict)  # replies by status
    slow: list[Slow] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, request: httpx.Request, seconds: float, status: int | None) -> None:
        with self._lock:
            self.requests += 1
            if status is None:
                self.failures += 1
            else:
                self.statuses[status] = self.statuses.get(status, 0) + 1
            if seconds > self.bound + SLACK_S:
                self.slow.append(Slow("client", f"{request.method} {request.url}", round(seconds, 1), self.bound))


class _TimedBody(httpx.SyncByteStream):
    """A reply's body that tells the watch when its last byte arrived (or the reply broke off)."""

    def __init__(self, response: httpx.Response, request: httpx.Request, started: float, watch: RequestWatch) -> None:
        assert isinstance(response.stream, httpx.SyncByteStream)  # what a sync transport answers with
        self.inner, self.status = response.stream, response.status_code
        self.request, self.started, self.watch = request, started, watch
        self.reported = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.inner
        except Exception:
            self._report(None)
            raise

    def close(self) -> None:
        self.inner.close()
        self._report(self.status)

    def _report(self, status: int | None) -> None:
        if not self.reported:
            self.reported = True
            self.watch.done(self.request, time.monotonic() - self.started, status)


class _Stopwatch(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, watch: RequestWatch) -> None:
        self.inner, self.watch = inner, watch

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        try:
            response = self.inner.handle_request(request)
        except Exception:
            self.watch.done(request, time.monotonic() - started, None)
            raise
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            extensions=response.extensions,
            stream=_TimedBody(response, request, started, self.watch),
        )

    def close(self) -> None:
        self.inner.close()


class WatchedNetwork(FleetNetwork):
    def __init__(self, device: Device, timer: DeviceTimer, *, crl_check: bool, watch: RequestWatch) -> None:
        super().__init__(device, timer, crl_check=crl_check)
        self.watch = watch

    def transport(self, ctx: ssl.SSLContext, credential: str | None = None) -> httpx.BaseTransport:
        return _Stopwatch(super().transport(ctx, credential), self.watch)


@dataclass
class WatchedPlan(FleetPlan):
    """A fleet plan whose devices' requests are all timed, failures included."""

    watch: RequestWatch | None = None

    def network(self, device: Device) -> FleetNetwork:
        if self.watch is None:
            return super().network(device)
        return WatchedNetwork(
            device, DeviceTimer(self.traffic, self.observe), crl_check=self.crl_check, watch=self.watch
        )


class RecordCollector:
    """The cmglab.services' request records over a run in which they restart (a restarted service starts its
    sequence numbers again)."""

    def __init__(self, view: LabView, services: tuple[str, ...]) -> None:
        self.view = view
        self.seen = {s: 0 for s in services}
        self.records: dict[str, list[Recorded]] = {s: [] for s in services}

    def collect(self, service: str) -> None:
        last = self.view.last_seq(service)
        after = self.seen[service] if last >= self.seen[service] else 0
        self.records[service] += self.view.records_after(service, after)
        self.seen[service] = last

    def collect_all(self) -> None:
        for service in self.seen:
            self.collect(service)

    def slow(self, upstream_timeout: float) -> list[Slow]:
        """Forwarded requests that took longer than their hop may wait; a request delayed on purpose
        by an injected fault at that hop carries the fault's ID and is left out."""
        bounds = {"cmg": upstream_timeout + CHANNEL_MARGIN, "cmg-connection-point": upstream_timeout}
        out = []
        for service, bound in bounds.items():
            for rec in self.records.get(service, []):
                seconds = rec.get("elapsed_ms", 0) / 1000
                if seconds > bound + SLACK_S and "fault" not in rec:
                    out.append(Slow(service, f"{rec['method']} {rec['path']}", round(seconds, 1), bound))
        return out

    def longest(self) -> dict[str, float]:
        return {
            s: round(max((r.get("elapsed_ms", 0) for r in recs), default=0) / 1000, 1)
            for s, recs in self.records.items()
        }
