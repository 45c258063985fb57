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
from collections.abc import Callable
from dataclasses import dataclass, field


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


async def _open(t: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(t.addr, t.port, ssl=t.ctx, server_hostname=t.host if t.ctx else None)


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
    """Send requests from `connections` concurrent workers for `duration` seconds (or max_requests)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    counter = 0
    deadline = time.perf_counter() + duration

    def more() -> bool:
        return time.perf_counter() < deadline and (max_requests is None or counter < max_requests)

    async def worker() -> None:
        nonlocal errors, counter
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while more():
            counter += 1
            request: Request | None = make_request(counter)
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = await _open(target)
                reader, writer = conn
                status = 0
                while request is not None:
                    writer.write(request.encode(target.authority, keepalive or request.then is not None))
                    status, body = await read_response(reader)
                    request = request.then(body) if request.then is not None and status == 200 else None
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
                errors += 1
                conn = None
                continue
            if not keepalive:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return Result(name, len(latencies), errors, time.perf_counter() - started, latencies, statuses)
