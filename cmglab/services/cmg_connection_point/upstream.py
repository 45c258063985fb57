"""The connection point's client for the management point: HTTP/1.1 keep-alive over the event loop's
own TLS (uvloop's, in C), llhttp (httptools) reading the replies, and a pool of idle connections per host.

Why not httpx here: forwarding is the point's whole job, and profiling the CMG path (`cmglab bench`,
section 6) showed httpx taking most of the point's CPU per request: its anyio TLS stream runs TLS through
memory BIOs in Python, and its pool polls every pooled socket on each request. Why not h11: its pure-Python
framing was a third of what remained. This does only what the forwarder needs: one request at a time per
connection, bodies streamed both ways, the lab's name mapping (the socket to the mapped address; SNI,
certificate check and Host on the real name).

Strict both ways, as h11 was. A request is written only from a method token, a target without spaces or
controls, header names that are tokens and values that are field-values (a byte that could end a line never
reaches the MP), its Content-Length exactly the body's. A reply's head is at most MAX_HEAD bytes and must
arrive within the timeout; its framing is one Content-Length digit string or `Transfer-Encoding: chunked`
alone (anything else, both, a switch of protocols, or bytes llhttp refuses: UpstreamError, a 502); a body
with neither ends at the close; a chunked reply's trailer is read and dropped (at most MAX_HEAD bytes), never
one of the head's fields. A connection goes back to the pool only at a message boundary: our request written in
full, the reply read to its end, keep-alive on both sides, and no byte from the MP after its end or while the
connection waits in the pool.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from cmglab.wire.httpclient import HostMap

IDLE_SECONDS = 60.0  # under the MP's keep-alive timeout (120 s): an idle connection it may have closed is not reused
BLOCK = 64 * 1024  # the most a request buffers before it writes, a reply before the reader pauses, a body piece
MAX_HEAD = 16 * 1024  # a reply's status line and headers (h11's bound): the head travels in one channel frame

_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(r"[\x21-\x7e]+\Z")  # RFC 9112 request-target: visible ASCII, no space
_FIELD_LINES = re.compile(  # `name: value\r\n` lines (h11's field-name and field-value)
    r"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+: (?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?\r\n)*\Z"
)
_DIGITS = re.compile(rb"[0-9]+\Z")
_OURS = frozenset({"host", "transfer-encoding"})  # the client writes these itself


class UpstreamError(Exception):
    """The MP could not be reached or broke the exchange off."""


class UpstreamTimeout(UpstreamError):
    """The MP did not answer within the connection point's timeout: a 504, where a broken exchange is a 502."""


class _Stop(Exception):
    """Raised in a parser callback: stop feeding (the reply was refused or has ended)."""


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Connection(asyncio.Protocol):
    """One TLS connection to the MP: the transport's callbacks feed llhttp, whose callbacks fill the reply in
    progress; the forwarder's side waits for what it needs (`wait`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.clean = True  # at a message boundary when the exchange ends (else: closed, never pooled)
        self.idle_since = 0.0
        self._waiter: asyncio.Future[bool] | None = None
        self._drain: asyncio.Future[None] | None = None  # set while the transport's write buffer is full
        self._reading_paused = False
        self._reset()

    def _reset(self) -> None:
        """A new exchange."""
        self.expecting = False  # a request is out (or going out) and its reply not complete
        self.head_only = False  # a HEAD request: the reply has no body, whatever its head says
        self.sent = False  # our request was written in full
        self.error: UpstreamError | None = None  # what broke the exchange
        self.head_size = 0  # head bytes so far, the informational replies' included
        self.trailer_size = 0  # a chunked reply's trailer fields, read and dropped (as h11's EndOfMessage)
        self.reason = b""
        self.raw: list[tuple[bytes, bytes]] = []
        self.status = 0  # the final reply's, once its head is complete
        self.content_length: int | None = None
        self.until_close = False  # no Content-Length nor chunked: the body ends at the close
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False  # the final reply was read to its end
        self._tail = b""  # HEAD: the last bytes of the head so far (its blank line may straddle reads)

    # -- the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.expecting:  # nothing asked, or the reply already ended: this connection is out of step
            self._break("the management point sent data outside a reply")
            return
        try:
            if self.head_only:
                self._feed_head_only(data)
            else:
                if not self.status:
                    self.head_size += len(data)  # bounds a head that never ends (llhttp has no limit of its own)
                self.parser.feed_data(data)
                if not self.status and self.head_size > MAX_HEAD:
                    self._break(f"the management point's reply head exceeds {MAX_HEAD} bytes")
        except httptools.HttpParserUpgrade:
            self._break("the management point switched protocols")
        except httptools.HttpParserError as e:
            cause = e.__context__  # what a callback raised
            if not isinstance(cause, _Stop):
                detail = f"{cause}" if isinstance(cause, UpstreamError) else f"{type(e).__name__}: {e}"
                self._break(f"malformed reply from the management point: {detail}")
        self._wake()

    def _feed_head_only(self, data: bytes) -> None:
        """A HEAD request's reply: heads only, each fed up to its blank line; a byte after the final one breaks
        the step (llhttp would read the head's Content-Length as a body)."""
        pos = 0
        while pos < len(data):
            if self.complete:
                self._break("the management point sent data after its reply")
                return
            end = (self._tail + data[pos : pos + 3]).find(b"\r\n\r\n")
            if end >= 0:
                cut = pos + end + 4 - len(self._tail)
            else:
                blank = data.find(b"\r\n\r\n", pos)
                cut = len(data) if blank < 0 else blank + 4
            piece, pos = data[pos:cut], cut
            ended = (self._tail + piece).endswith(b"\r\n\r\n")
            self._tail = b"" if ended else (self._tail + piece)[-3:]
            self.head_size += len(piece)
            if self.head_size > MAX_HEAD:
                self._break(f"the management point's reply head exceeds {MAX_HEAD} bytes")
                return
            self.parser.feed_data(piece)
            if self.status:  # the final head is complete: the parser expects a body that will not come
                self.complete, self.expecting = True, False
                self.parser = httptools.HttpResponseParser(self)

    def eof_received(self) -> bool:
        return False  # close: the MP ends an exchange by closing only where the body has no length

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.clean = True, False
        if self.expecting and not self.complete and self.error is None:
            if self.until_close and exc is None:
                self.complete, self.expecting = True, False  # the body's end is the close
            elif exc is not None:
                self.error = UpstreamError(f"{type(exc).__name__}: {exc}")
            else:
                self.error = UpstreamError("the management point closed the connection before the end of its reply")
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _break(self, reason: str) -> None:
        """The exchange cannot go on (or the connection is out of step): the reply fails unless complete."""
        self.clean = False
        if not self.complete and self.error is None:
            self.error = UpstreamError(reason)
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # -- llhttp's callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second reply to one request
            self._break("the management point sent more than one reply")
            raise _Stop

    def on_status(self, status: bytes) -> None:
        self.reason += status  # may come in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:  # a chunked reply's trailer (llhttp reports it as a header): never one of the head's
            self.trailer_size += len(name) + len(value) + 4
            if self.trailer_size > MAX_HEAD:
                raise UpstreamError(f"the management point's reply trailer exceeds {MAX_HEAD} bytes")
            return
        self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        length = transfer = None
        lengths = transfers = 0
        size = len(self.reason) + 15  # the status line
        for name, value in self.raw:
            size += len(name) + len(value) + 4
            low = name.lower()
            if low == b"content-length":
                length, lengths = value, lengths + 1
            elif low == b"transfer-encoding":
                transfer, transfers = value, transfers + 1
        if size > MAX_HEAD:
            raise UpstreamError(f"the management point's reply head exceeds {MAX_HEAD} bytes")
        if status < 200:
            if status == 101 or length is not None or transfer is not None:
                raise UpstreamError(f"informational reply {status} with a body or a protocol switch")
            self.reason, self.raw = b"", []  # 100 Continue, 103 Early Hints: the reply comes after
            return
        if transfer is not None and (transfers > 1 or transfer.strip().lower() != b"chunked"):
            raise UpstreamError(f"Transfer-Encoding {transfer!r}: only chunked is read")
        if length is not None and (lengths > 1 or transfer is not None or not _DIGITS.match(length)):
            raise UpstreamError("Content-Length not one digit string, or beside Transfer-Encoding")
        if self.parser.get_http_version() != "1.1" or not self.parser.should_keep_alive():
            self.clean = False
        self.content_length = int(length) if length is not None else None
        no_body = self.head_only or status in (204, 304)
        self.until_close = not no_body and length is None and transfer is None
        if self.until_close:
            self.clean = False
        self.status = status

    def on_body(self, data: bytes) -> None:
        self.body.append(data)
        self.buffered += len(data)
        if self.buffered > BLOCK and not self._reading_paused and self.transport is not None:
            self._reading_paused = True  # the forwarder takes it as the channel does: the MP waits meanwhile
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.status:
            self.complete, self.expecting = True, False

    # -- the forwarder's side

    def reusable(self) -> bool:
        return not self.closed and self.clean and time.monotonic() - self.idle_since < IDLE_SECONDS

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def take(self) -> list[bytes]:
        """The body bytes read so far (the reader resumes if it paused)."""
        chunks, self.body, self.buffered = self.body, [], 0
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunks

    async def wait(self, timeout: float, what: str, said: float | None = None) -> None:
        """Until something arrives (or the connection ends); UpstreamTimeout after `timeout` s of nothing
        (`said`: the timeout the message names)."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter)  # no Task, no Timeout context per wait
        try:
            woken = await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if not woken:
            raise UpstreamTimeout(f"no {what} from the management point within {said or timeout:g} s")
        if self.error is not None:
            raise self.error

    async def write(self, data: bytes, timeout: float) -> None:
        if self.closed:
            raise self.error or UpstreamError("the management point closed the connection")
        assert self.transport is not None
        self.transport.write(data)
        if self._drain is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._drain
        except TimeoutError as e:
            raise UpstreamTimeout(f"the management point took no data for {timeout:g} s") from e
        if self.closed:
            raise self.error or UpstreamError("the management point closed the connection")


class Reply:
    """The MP's reply: status, headers, and the body read as it arrives. `aclose()` returns the connection
    to the pool when it is at a message boundary, else closes it."""

    def __init__(self, pool: Upstream, key: tuple[str, int], conn: _Connection) -> None:
        self.pool, self.key, self.conn = pool, key, conn
        self.status_code = conn.status
        self.reason_phrase = conn.reason.decode("latin-1")
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in conn.raw]  # the MP's own casing
        self.content_length = conn.content_length  # validated: one digit string, or None

    async def body(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            if conn.body:
                for chunk in conn.take():
                    if len(chunk) <= BLOCK:
                        yield chunk
                    else:  # one read can hold more than a channel frame may carry
                        for start in range(0, len(chunk), BLOCK):
                            yield chunk[start : start + BLOCK]
            elif conn.complete:
                return
            else:
                await conn.wait(self.pool.timeout, "data")

    async def read(self) -> bytes:
        """The whole body (a reply whose length is known to be small)."""
        conn, parts = self.conn, []
        while True:
            parts += conn.take()
            if conn.complete:
                return b"".join(parts)
            await conn.wait(self.pool.timeout, "data")

    async def aclose(self) -> None:
        conn = self.conn
        if conn.complete and conn.sent and conn.clean and not conn.closed and not conn.body:
            conn._reset()
            conn.idle_since = time.monotonic()
            idle = self.pool.idle.setdefault(self.key, [])
            if len(idle) < self.pool.max_idle:
                idle.append(conn)
                return
        conn.close()


def _request_head(method: str, target: str, netloc: str, headers: list[tuple[str, str]], chunked: bool) -> bytes:
    """The request line and headers, checked as h11 checks what it sends: UpstreamError when a byte could
    change the message's meaning at the MP."""
    lines = "".join([f"{k}: {v}\r\n" for k, v in headers])
    well_formed = _FIELD_LINES.match(lines) and lines.count("\n") == len(headers)  # a line per header, none more
    if not (_TOKEN.match(method) and _TARGET.match(target) and _TARGET.match(netloc) and well_formed):
        bad = next((k for k, v in headers if not _FIELD_LINES.match(f"{k}: {v}\r\n") or "\n" in k + v), None)
        raise UpstreamError(
            f"refused to send header {bad[:64]!r}" if bad else f"refused to send {method[:32]!r} {target[:120]!r}"
        )
    end = "Transfer-Encoding: chunked\r\n\r\n" if chunked else "\r\n"
    return f"{method} {target} HTTP/1.1\r\nHost: {netloc}\r\n{lines}{end}".encode("latin-1")  # checked above


def _declared_length(headers: list[tuple[str, str]]) -> tuple[int | None, bool]:
    """The Content-Length the caller set (one digit string) and whether it asked the connection closed."""
    length: int | None = None
    close = False
    for k, v in headers:
        low = k.lower()
        if low == "content-length":
            if length is not None or not v.isascii() or not v.isdigit():
                raise UpstreamError(f"refused to send Content-Length {v[:32]!r}")
            length = int(v)
        elif low == "connection":
            close = close or "close" in v.lower()
        elif low in _OURS:
            raise UpstreamError(f"refused to send {k}: the client writes it")
    return length, close


class Upstream:
    def __init__(self, ctx: ssl.SSLContext, hosts: HostMap, *, timeout: float, max_idle: int = 50) -> None:
        self.ctx, self.hosts, self.timeout, self.max_idle = ctx, hosts, timeout, max_idle
        self.idle: dict[tuple[str, int], list[_Connection]] = {}

    async def _connect(self, host: str, port: int) -> _Connection:
        addr = self.hosts.get((host.lower(), port), host)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), addr, port, ssl=self.ctx, server_hostname=host
                )
        except TimeoutError as e:
            raise UpstreamTimeout(f"connecting to {host}:{port} took over {self.timeout:g} s") from e
        except (OSError, ssl.SSLError) as e:
            raise UpstreamError(f"{type(e).__name__}: {e}") from e
        return conn

    def _pooled(self, key: tuple[str, int]) -> _Connection | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if conn.reusable():
                return conn
            conn.close()
        return None

    async def request(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | AsyncIterator[bytes] | None
    ) -> Reply:
        """`body`: none, all of it (a request that came in one frame), or its pieces as they come."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        key = (host.lower(), parts.port or 443)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        length, close = _declared_length(headers)  # the forwarder drops the client's Host (hop-by-hop)
        chunked = body is not None and length is None
        if (body is None or isinstance(body, bytes)) and len(body or b"") != (length or 0) and not chunked:
            raise UpstreamError(f"the body is {len(body or b'')} bytes, its Content-Length {length}")
        head = _request_head(method, target, parts.netloc, headers, chunked)
        conn = self._pooled(key) or await self._connect(host, key[1])
        conn.expecting, conn.head_only = True, method == "HEAD"
        if close:
            conn.clean = False
        try:
            await self._send(conn, head, body, length, chunked)
            conn.sent = True
            deadline = conn.loop.time() + self.timeout
            while not conn.status:  # the whole head within the timeout, however it trickles
                await conn.wait(deadline - conn.loop.time(), "reply", self.timeout)
        except BaseException:
            conn.close()
            raise
        return Reply(self, key, conn)

    async def _send(
        self,
        conn: _Connection,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        chunked: bool,
    ) -> None:
        """One write for a small request (the usual CcmMessaging POST leaves in one TLS record, and the MP wakes
        once for it); a streamed body in writes of up to BLOCK."""
        if body is None or isinstance(body, bytes):
            data = body or b""
            if chunked:
                data = (f"{len(data):x}\r\n".encode() + data + b"\r\n" if data else b"") + b"0\r\n\r\n"
            await conn.write(head + data, self.timeout)
            return
        pending, sent = [head], 0
        size = len(head)
        async for chunk in body:
            if not chunk:
                continue
            sent += len(chunk)
            if length is not None and sent > length:
                raise UpstreamError(f"the body exceeds its Content-Length {length}")
            pending += [f"{len(chunk):x}\r\n".encode(), chunk, b"\r\n"] if chunked else [chunk]
            size += len(chunk)
            if size >= BLOCK:
                await conn.write(b"".join(pending), self.timeout)
                pending, size = [], 0
        if length is not None and sent != length:
            raise UpstreamError(f"the body is {sent} bytes, its Content-Length {length}")
        if chunked:
            pending.append(b"0\r\n\r\n")
        await conn.write(b"".join(pending), self.timeout)

    async def aclose(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()
