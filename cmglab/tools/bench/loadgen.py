"""A small load generator: raw HTTP/1.1 over asyncio + TLS, light enough to saturate one uvicorn worker
(httpx is the bottleneck at these rates, docs/protocol-notes.md, mTLS §5).

Keep-alive mode reuses each connection; handshake mode opens a new TLS connection per request (the
full mutual-TLS handshake is what dominates a CMG's cost).
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast


@dataclass
class Target:
    addr: str  # where the socket goes
    port: int
    host: str  # the real name: SNI, certificate check, Host header
    ctx: ssl.SSLContext | None

    @property
    def authority(self) -> str:
        """The Host header a client sends: the name, and the port unless it is the scheme's default (the CMG
        refuses a Host that does not name it, port included)."""
        default = 443 if self.ctx is not None else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@dataclass
class Request:
    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # a request that needs the reply of this one first (a nonce, then the signed request): built from this
    # reply's body and sent on the same connection; the pair counts as one operation, timed as a whole
    then: Callable[[bytes], Request] | None = None

    def encode(self, host: str, keepalive: bool) -> bytes:
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            f"Host: {host}",
            f"Content-Length: {len(self.body)}",
            "Connection: " + ("keep-alive" if keepalive else "close"),
        ]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, float | int | str | dict[int, int]]:
        return {
            "name": self.name,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p95_ms": round(self.percentile(95), 3),
            "p99_ms": round(self.percentile(99), 3),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 3) if self.latencies_ms else 0.0,
            "statuses": self.statuses,
        }


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one response; returns its status and body. Handles Content-Length and chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value)
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    body = b""
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                break
    elif length:
        body = await reader.readexactly(length)
    return status, body


def parse_response(buf: bytes) -> tuple[int, bytes, int] | None:
    """One whole response at the start of `buf`: its status, its body and how many bytes it took; None while
    it is incomplete. Reads only what framing needs: Content-Length, else a chunked body, else none."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    status = int(head.split(b" ", 2)[1])
    start = end + 4
    at = head.find(b"\ncontent-length:")
    if at >= 0:
        stop = head.find(b"\r", at)
        length = int(head[at + 16 : stop if stop >= 0 else None])
        return (status, buf[start : start + length], start + length) if len(buf) >= start + length else None
    at = head.find(b"\ntransfer-encoding:")
    if at < 0 or b"chunked" not in head[at:].split(b"\r", 1)[0]:
        return status, b"", start
    chunks, pos = [], start
    while True:  # size line, data, CRLF; the last chunk is empty (no trailers: none of the lab's replies has any)
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2 + size + 2
        if len(buf) < pos:
            return None
        chunks.append(buf[eol + 2 : eol + 2 + size])
        if size == 0:
            return status, b"".join(chunks), pos


class _Run:
    """What the connections of one run share: the requests to send, and what came back."""

    def __init__(
        self,
        target: Target,
        make_request: Callable[[int], Request],
        keepalive: bool,
        duration: float,
        max_requests: int | None,
    ) -> None:
        self.target, self.make_request, self.keepalive = target, make_request, keepalive
        self.deadline, self.max_requests = time.perf_counter() + duration, max_requests
        self.authority = target.authority
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.counter = 0
        self._last: Request | None = None  # the request encoded last and its bytes: a repeated one is encoded once
        self._wire = b""

    def next_request(self) -> Request | None:
        if time.perf_counter() >= self.deadline or (
            self.max_requests is not None and self.counter >= self.max_requests
        ):
            return None
        self.counter += 1
        return self.make_request(self.counter)

    def wire(self, request: Request) -> bytes:
        if request is self._last:
            return self._wire
        data = request.encode(self.authority, self.keepalive or request.then is not None)
        if request.then is None:  # a chained request is built from a reply: never the same twice
            self._last, self._wire = request, data
        return data

    def answered(self, status: int, started: float) -> None:
        self.latencies.append((time.perf_counter() - started) * 1000)
        self.statuses[status] = self.statuses.get(status, 0) + 1


class _Connection(asyncio.Protocol):
    """One connection's requests, driven from its callbacks: a reply is parsed where it arrives and the next
    request written there, with no task switch, future or stream buffer per request (the generator shares the
    CPUs with the services in section 8, so its CPU per request is part of what that section measures).
    `done` resolves when the connection's last request is answered, or fails with why it could not be."""

    def __init__(self, run: _Run, first: Request, started: float, done: asyncio.Future[None]) -> None:
        self.run, self.request, self.started, self.done = run, first, started, done
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS transport is not a subclass of it
        self.transport.write(self.run.wire(self.request))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            while self.buf and (parsed := parse_response(self.buf)) is not None and not self.done.done():
                status, body, used = parsed
                self.buf = self.buf[used:]
                self._answered(status, body)
        except BaseException as e:  # the worker raises it (a budget's alarm too), not the loop's handler
            if not self.done.done():
                self.done.set_exception(e)

    def _answered(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        run, request = self.run, self.request
        if request.then is not None and status == 200:  # the pair's second request, on this connection
            self.request = request.then(body)
        else:
            run.answered(status, self.started)
            following = run.next_request() if run.keepalive else None
            if following is None:
                self.done.set_result(None)
                return
            self.request, self.started = following, time.perf_counter()
        self.transport.write(run.wire(self.request))


async def run(
    name: str,
    target: Target,
    make_request: Callable[[int], Request],
    *,
    connections: int = 16,
    duration: float = 5.0,
    keepalive: bool = True,
    max_requests: int | None = None,
) -> Result:
    """Send requests from `connections` concurrent connections for `duration` seconds (or max_requests). A
    connection that fails counts one error and is opened again; in handshake mode each request opens one."""
    state = _Run(target, make_request, keepalive, duration, max_requests)
    loop = asyncio.get_running_loop()

    async def connection() -> None:
        while (request := state.next_request()) is not None:
            done: asyncio.Future[None] = loop.create_future()
            started = time.perf_counter()
            transport: asyncio.BaseTransport | None = None
            try:
                transport, _ = await loop.create_connection(
                    lambda r=request, s=started, d=done: _Connection(state, r, s, d),
                    target.addr,
                    target.port,
                    ssl=target.ctx,
                    server_hostname=target.host if target.ctx else None,
                )
                await done
            except (OSError, ssl.SSLError, ValueError):
                state.errors += 1
            finally:
                if transport is not None:
                    transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return Result(
        name, len(state.latencies), state.errors, time.perf_counter() - started, state.latencies, state.statuses
    )


def run_sync(name: str, target: Target, make_request: Callable[[int], Request], **options: Any) -> Result:
    """`run` on an event loop of its own: uvloop's where it is installed (its TLS is in C: the generator takes
    a third less CPU per request, which it shares with the services in section 8), asyncio's elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(name, target, make_request, **options))
    return uvloop.run(_raising(run(name, target, make_request, **options)))


async def _raising(main: Coroutine[Any, Any, Result]) -> Result:
    """`main`, ended by an exception that is not an Exception wherever it is raised. uvloop hands one raised in
    a callback (a Python signal handler's: the bench's budget alarm, guard.py) to the loop's exception handler,
    which logs it and goes on; asyncio's own loop raises it out of the run, and so does this."""
    task = asyncio.current_task()
    assert task is not None
    fatal: list[BaseException] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException) and not isinstance(exc, Exception):
            fatal.append(exc)
            task.cancel()
        else:
            loop.default_exception_handler(context)

    asyncio.get_running_loop().set_exception_handler(handler)
    try:
        return await main
    except asyncio.CancelledError:
        if fatal:
            raise fatal[0] from None
        raise
