"""The connection point's client for the management point: HTTP/1.1 keep-alive over the event loop's
own TLS (uvloop's, in C), h11 for the framing, and a pool of idle connections per host.

Why not httpx here: forwarding is the point's whole job, and profiling the CMG path (`cmglab bench`,
section 6) showed httpx taking most of the point's CPU per request: its anyio TLS stream runs TLS through
memory BIOs in Python, and its pool polls every pooled socket on each request. This does only what the
forwarder needs: one request at a time per connection, bodies streamed both ways, the lab's name mapping
(the socket to the mapped address; SNI, certificate check and Host on the real name).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from cmglab.wire.httpclient import HostMap

IDLE_SECONDS = 60.0  # under the MP's keep-alive timeout (120 s): an idle connection it may have closed is not reused
BLOCK = 64 * 1024  # bytes per socket read, and the most a request buffers before it writes


class UpstreamError(Exception):
    """The MP could not be reached or broke the exchange off."""


class UpstreamTimeout(UpstreamError):
    """The MP did not answer within the connection point's timeout: a 504, where a broken exchange is a 502."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0

    def reusable(self) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and time.monotonic() - self.idle_since < IDLE_SECONDS
        )

    def close(self) -> None:
        self.writer.close()


class Reply:
    """The MP's reply: status, headers, and the body read as it arrives. `aclose()` returns the connection
    to the pool when the body was read to its end, else closes it."""

    def __init__(self, pool: Upstream, key: tuple[str, int], conn: _Connection, head: h11.Response) -> None:
        self.pool, self.key, self.conn = pool, key, conn
        self.status_code = head.status_code
        self.reason_phrase = head.reason.decode("latin-1")
        self.headers = head.headers.raw_items()  # the MP's own casing
        self._done = False

    async def body(self) -> AsyncIterator[bytes]:
        while not self._done:
            event = await self.pool.next_event(self.conn)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
            elif isinstance(event, h11.ConnectionClosed):
                raise UpstreamError("the management point closed the connection before the end of its reply")

    async def aclose(self) -> None:
        conn = self.conn
        if self._done and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            idle = self.pool.idle.setdefault(self.key, [])
            if len(idle) < self.pool.max_idle:
                idle.append(conn)
                return
        conn.close()


class Upstream:
    def __init__(self, ctx: ssl.SSLContext, hosts: HostMap, *, timeout: float, max_idle: int = 50) -> None:
        self.ctx, self.hosts, self.timeout, self.max_idle = ctx, hosts, timeout, max_idle
        self.idle: dict[tuple[str, int], list[_Connection]] = {}

    async def _connect(self, host: str, port: int) -> _Connection:
        addr = self.hosts.get((host.lower(), port), host)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(addr, port, ssl=self.ctx, server_hostname=host, limit=BLOCK), self.timeout
            )
        except TimeoutError as e:
            raise UpstreamTimeout(f"connecting to {host}:{port} took over {self.timeout:g} s") from e
        except (OSError, ssl.SSLError) as e:
            raise UpstreamError(f"{type(e).__name__}: {e}") from e
        return _Connection(reader, writer)

    def _pooled(self, key: tuple[str, int]) -> _Connection | None:
        idle = self.idle.get(key, [])
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if conn.reusable():
                return conn
            conn.close()
        return None

    async def next_event(self, conn: _Connection) -> h11.Event:
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as e:
                raise UpstreamError(f"RemoteProtocolError: {e}") from e
            if event is h11.PAUSED:
                raise UpstreamError("the management point sent more than one reply")
            if isinstance(event, h11.Event):
                return event
            try:
                async with asyncio.timeout(self.timeout):  # no Task per read, as wait_for makes
                    data = await conn.reader.read(BLOCK)
            except TimeoutError as e:
                raise UpstreamTimeout(f"no data from the management point for {self.timeout:g} s") from e
            except (OSError, ssl.SSLError) as e:
                raise UpstreamError(f"{type(e).__name__}: {e}") from e
            conn.h11.receive_data(data)

    @staticmethod
    def _encode(conn: _Connection, event: h11.Event) -> bytes:
        try:
            return conn.h11.send(event) or b""
        except h11.LocalProtocolError as e:  # e.g. a header value h11 refuses to send
            raise UpstreamError(f"LocalProtocolError: {e}") from e

    async def _write(self, conn: _Connection, data: bytes) -> None:
        conn.writer.write(data)
        try:
            async with asyncio.timeout(self.timeout):
                await conn.writer.drain()
        except TimeoutError as e:
            raise UpstreamTimeout(f"the management point took no data for {self.timeout:g} s") from e
        except (OSError, ssl.SSLError) as e:
            raise UpstreamError(f"{type(e).__name__}: {e}") from e

    async def request(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | AsyncIterator[bytes] | None
    ) -> Reply:
        """`body`: none, all of it (a request that came in one frame), or its pieces as they come."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        key = (host.lower(), parts.port or 443)
        conn = self._pooled(key) or await self._connect(host, key[1])
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = [("Host", parts.netloc), *headers]  # the forwarder drops the client's (hop-by-hop)
        if body is not None and not any(k.lower() == "content-length" for k, _ in headers):
            sent.append(("Transfer-Encoding", "chunked"))
        try:
            # one write per BLOCK of request, not one per part: a small request (the usual CcmMessaging
            # POST) leaves in one TLS record, and the MP wakes once for it
            pending = self._encode(conn, h11.Request(method=method, target=target, headers=sent))
            if isinstance(body, bytes):
                pending += self._encode(conn, h11.Data(data=body)) if body else b""
            elif body is not None:
                async for chunk in body:
                    pending += self._encode(conn, h11.Data(data=chunk))
                    if len(pending) >= BLOCK:
                        await self._write(conn, pending)
                        pending = b""
            await self._write(conn, pending + self._encode(conn, h11.EndOfMessage()))
            event = await self.next_event(conn)
            while isinstance(event, h11.InformationalResponse):
                event = await self.next_event(conn)
            if not isinstance(event, h11.Response):
                raise UpstreamError(f"unexpected {type(event).__name__} instead of a reply head")
        except BaseException:
            conn.close()
            raise
        return Reply(self, key, conn, event)

    async def aclose(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()
