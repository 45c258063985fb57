"""Request limits enforced while reading, before any application code or authentication runs.

- The request head (request line and header fields) is counted as its bytes arrive, ahead of the HTTP parser:
  over `max_url_bytes` on the request line answers 414, over `max_header_bytes` for the whole head 431, and the
  connection closes. Neither llhttp (httptools) nor h11 bound a head by itself the way we need (httptools has no
  limit at all: 256 MiB of headers were once answered 200).
- A head must arrive within `head_timeout` of its first byte (408), and a new connection must start one within
  `idle_timeout` (closed silently): half-sent heads no longer hold connections forever (slowloris).
- A reply that starts before its request body has fully arrived says `Connection: close` and the connection
  closes after it (as IIS does not read an unwanted body forever): otherwise a client trickling that body cancels
  every keep-alive timer, and the connection outlives every timeout. The header tells a keep-alive client not
  to send its next request on a connection about to close (it would meet the FIN: "Server disconnected"); the
  close stands even if the body completes before the reply ends. When a new request cycle starts, the idle (or
  head) timer is armed again, so the next head is bounded too.
- A body over `max_body_bytes` answers 413: at once from Content-Length, or as soon as a chunked body passes the
  cap (the application never buffers more).
- A chunked body of more than `max_body_chunks` chunks answers 413 (httptools listeners, which are all the
  services'): each chunk costs a Python callback whatever its size, so a million one-byte chunks (1 MB, under the
  byte cap) once cost seconds of CPU.
- A chunked body's trailer fields are dropped (uvicorn appended them to the request's headers, without bound);
  past `max_header_bytes` of them, or of chunk framing (size lines, extensions, a trailer line llhttp buffers
  whole) beyond FRAMING_PER_CHUNK per chunk, the request answers 431.

Every refusal is logged (`cmglab.limits`) with the peer and the listener.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
import httptools

from cmglab.runtime.idle import Deadlines, Slot

log = logging.getLogger("cmglab.limits")

CLOSE = (b"connection", b"close")

REASONS = {
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 64 * 1024
    max_url_bytes: int = 16 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    max_body_chunks: int = 4096
    head_timeout: float = 20.0
    idle_timeout: float = 120.0
    listener: str = ""
    # an idle connection is dropped at once, not closed (TLS: a close waits up to 30 s for the peer's close_notify,
    # which a silent peer never sends, and the connection holds its slot meanwhile): the CMG connector's
    drop_idle: bool = False


def plain_response(status: int, detail: str) -> bytes:
    body = f"{status} {REASONS[status]}: {detail}\n".encode()
    return (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class _HeadLimitsMixin:
    """For uvicorn's HTTP protocols: counts each request head's bytes before the parser sees them."""

    limits: Limits
    deadlines: Deadlines  # the listener's (runtime/server.py)
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None
    app: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._timer: Slot | None = None  # the head or idle deadline's slot (idle.py: no timer per connection)
        self._head_reset()
        self._arm(self.limits.idle_timeout)
        self._inner_app, self.app = self.app, self._app_closing_early_replies  # uvicorn reads self.app per request

    def _body_pending(self, scope: Any) -> bool:
        """Whether the request of `scope` (the one being answered) has not all arrived at the protocol yet."""
        raise NotImplementedError

    async def _app_closing_early_replies(self, scope: Any, receive: Any, send: Any) -> None:
        """A request whose body is all in when its application starts (almost every one: the parser has the
        whole message before the task runs) is answered as it is; otherwise the reply's start is checked."""
        if scope["type"] == "http" and self._body_pending(scope):
            send = self._closing_if_early(scope, send)
        await self._inner_app(scope, receive, send)

    def _closing_if_early(self, scope: Any, send: Any) -> Any:
        async def send_closing_if_early(message: Any) -> None:
            if message["type"] == "http.response.start" and self._body_pending(scope):
                headers = list(message.get("headers", ()))
                if not any(n.lower() == b"connection" and b"close" in v.lower() for n, v in headers):
                    message = {**message, "headers": [*headers, CLOSE]}
                log.info(
                    "%s: closing the connection from %s: replied before its request body arrived",
                    self.limits.listener,
                    self.client[0] if self.client else "?",
                )
            # uvicorn (httptools and h11 alike) closes the connection after a reply that says Connection: close
            await send(message)

        return send_closing_if_early

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.deadlines.arm(self, self.loop, delay)

    def _disarm(self) -> None:
        if self._timer is not None:
            self.deadlines.disarm(self, self._timer)
            self._timer = None

    def _head_reset(self) -> None:
        """The next bytes begin a new request head."""
        self._reading_head, self._head_bytes, self._carry, self._line_done = True, 0, b"", False

    def _head_done(self) -> None:
        self._reading_head = False
        self._disarm()

    def timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._reading_head and self._head_bytes:
            self._refuse(408, f"request head not complete within {self.limits.head_timeout:g} s")
        elif self.limits.drop_idle:  # a connection that sent nothing (more): nothing to flush
            self.transport.abort()
        else:  # a connection that never sent anything
            self.transport.close()

    def _refuse(self, status: int, detail: str) -> None:
        log.warning(
            "%s: refused %s from %s: %s", self.limits.listener, status, self.client[0] if self.client else "?", detail
        )
        self._reading_head = False
        self._disarm()
        self.transport.write(plain_response(status, detail))
        self.transport.close()

    def _head_within_limits(self, data: bytes) -> bool:
        if self._head_bytes == 0 and not self._carry:
            data_start = len(data) - len(data.lstrip(b"\r\n"))  # empty lines before a request are allowed
            if data_start == len(data):
                return True
            self._arm(self.limits.head_timeout)
        else:
            data_start = 0
        buf = self._carry + data
        base = self._head_bytes - len(self._carry)  # where buf[0] lies in this head
        if not self._line_done:
            nl = buf.find(b"\n", data_start)
            line = base + (nl if nl >= 0 else len(buf)) - data_start
            if line > self.limits.max_url_bytes:
                self._refuse(414, f"request line over {self.limits.max_url_bytes} bytes")
                return False
            self._line_done = nl >= 0
        end = buf.find(b"\r\n\r\n")
        head = base + (end + 4 if end >= 0 else len(buf))
        if head > self.limits.max_header_bytes:
            self._refuse(431, f"request head over {self.limits.max_header_bytes} bytes")
            return False
        self._head_bytes += len(data)
        self._carry = buf[-3:]
        return True

    def data_received(self, data: bytes) -> None:
        if self._reading_head and not self._head_within_limits(data):
            return
        super().data_received(data)  # type: ignore[misc]
        self._after_feed()

    def _after_feed(self) -> None:
        pass

    def _close_if_body_unread(self, unread: bool) -> None:
        """The reply is out but the request body is not all in: close after the reply rather than wait on it (a
        backstop: a reply started early said Connection: close and uvicorn closed the connection already)."""
        if unread and not self.transport.is_closing():
            log.info(
                "%s: closing the connection from %s: replied before its request body arrived",
                self.limits.listener,
                self.client[0] if self.client else "?",
            )
            self._reading_head = False
            self._disarm()
            self.transport.close()  # flushes the reply first

    def _one_idle_timer(self) -> None:
        """uvicorn arms a keep-alive timer of its own (the same idle timeout) after each reply; ours, armed for the
        next head, closes the connection just the same (or sooner): an idle connection keeps one timer, not two."""
        unset = getattr(self, "_unset_keepalive_if_required", None)
        if self._timer is not None and unset is not None:
            unset()

    def _await_next_head(self, pending: bytes = b"") -> None:
        """Between requests: the next head must start within the idle timeout (or end within the head timeout)."""
        if self.transport.is_closing():
            return
        self._head_reset()
        self._arm(self.limits.idle_timeout)
        if pending:  # bytes of the next head the parser already holds
            self._head_within_limits(pending)


FRAMING_PER_CHUNK = 64  # a chunk's size line and the CRLF after its data, with room for a short extension


class HttpToolsHeadLimits(_HeadLimitsMixin):
    _chunks = 0  # chunk headers of the message being read (llhttp's on_chunk_header: the last, empty chunk too)
    _trailer: int | None = None  # None in a head; else the chunked trailer's bytes so far (the head is complete)
    _body_refusal: tuple[int, str] | None = None  # the body refused while read (chunk cap, trailer): not a plain 400
    # a chunked body's bytes read that were not its data (size lines, extensions, trailer): llhttp bounds none, and
    # httptools buffers a trailer line whole; at most max_header_bytes plus FRAMING_PER_CHUNK per chunk
    _framing = 0
    _in_body = False  # after a head (not an upgrade's) until the next message begins: its reads are counted

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            self._framing += len(data)
        super().data_received(data)
        if (
            self._in_body
            and self._framing > self.limits.max_header_bytes + FRAMING_PER_CHUNK * self._chunks
            and self._body_refusal is None
            and not self.transport.is_closing()
        ):
            self._body_refusal = (431, f"chunk framing or trailer of over {self.limits.max_header_bytes} bytes")
            self.send_400_response("chunk framing too large")

    def on_body(self, body: bytes) -> None:
        self._framing -= len(body)
        super().on_body(body)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailer is None:
            super().on_header(name, value)  # type: ignore[misc]
            return
        # a chunked body's trailer field, which llhttp reports as a header: uvicorn would append it to the
        # request's headers (scope["headers"] is its list), unbounded. Dropped, at most max_header_bytes of them
        self._trailer += len(name) + len(value) + 4
        if self._trailer > self.limits.max_header_bytes:
            self._body_refusal = (431, f"chunked trailer of over {self.limits.max_header_bytes} bytes")
            raise httptools.HttpParserError("chunked trailer too large")

    def on_message_begin(self) -> None:
        self._trailer, self._in_body = None, False
        super().on_message_begin()  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._head_done()
        self._chunks = self._framing = 0
        self._trailer = 0
        upgrade = self.parser.should_upgrade()
        self._in_body = not upgrade  # a WebSocket's frames are not this message's body
        if upgrade and not self._should_upgrade():
            # an upgrade uvicorn does not serve (anything but a WebSocket, or CONNECT): llhttp stops at the head, so
            # uvicorn dropped the body or, arriving in a later read, parsed it as the next request (smuggling)
            log.warning(
                "%s: refused 400 from %s: an upgrade this listener does not serve",
                self.limits.listener,
                self.client[0] if self.client else "?",
            )
            raise httptools.HttpParserError("unsupported upgrade")  # uvicorn answers 400 and closes
        super().on_headers_complete()  # type: ignore[misc]

    cycle: Any
    pipeline: Any
    parser: Any
    _should_upgrade: Any

    def on_chunk_header(self) -> None:
        self._chunks += 1
        if self._chunks > self.limits.max_body_chunks + 1:  # the cap's data chunks and the last, empty one
            self._body_refusal = (413, f"chunked body of over {self.limits.max_body_chunks} chunks")
            raise httptools.HttpParserError("too many chunks")  # llhttp stops here; uvicorn calls send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._body_refusal is None:
            super().send_400_response(msg)  # type: ignore[misc]
            return
        cycle = self.cycle  # the application may be reading the body: it sees a disconnect, and answers nothing
        started = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        status, detail = self._body_refusal
        if started:  # a reply is under way: no second one, the connection closes
            log.warning(
                "%s: closing the connection from %s: %s",
                self.limits.listener,
                self.client[0] if self.client else "?",
                detail,
            )
            self.transport.close()
            return
        self._refuse(status, detail)

    def _body_pending(self, scope: Any) -> bool:
        # the latest cycle; a later request's head only parses once this one's body is complete
        cycle = self.cycle
        return cycle is not None and cycle.scope is scope and bool(cycle.more_body)

    def on_message_complete(self) -> None:  # a pipelined next head is counted from here
        upgrade = self.parser.should_upgrade() and self._should_upgrade()  # a WebSocket: no next head, no timer
        super().on_message_complete()  # type: ignore[misc]
        if not upgrade and self.cycle is not None and self.cycle.response_complete:  # the reply went first
            self._await_next_head()
        else:
            self._head_reset()

    def on_response_complete(self) -> None:
        cycle = self.cycle  # a later pipelined request's cycle is not complete yet
        self._close_if_body_unread(cycle is not None and cycle.response_complete and cycle.more_body)
        pipelined = bool(self.pipeline)  # a next request whose head is in already starts now
        super().on_response_complete()  # type: ignore[misc]
        if self._reading_head and not self._head_bytes and not pipelined:
            self._await_next_head()
        self._one_idle_timer()


class H11HeadLimits(_HeadLimitsMixin):
    conn: h11.Connection
    cycle: Any

    def _body_pending(self, scope: Any) -> bool:
        # h11 parses one request at a time (a pipelined one waits), so their state is this request's
        cycle = self.cycle
        return cycle is not None and cycle.scope is scope and self.conn.their_state is h11.SEND_BODY

    def _after_feed(self) -> None:
        if self._reading_head and self.conn.their_state is not h11.IDLE:
            self._head_done()
        elif not self._reading_head and self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            self._await_next_head(self.conn.trailing_data[0])  # the body ended after the reply: a new cycle

    def on_response_complete(self) -> None:  # h11 holds a pipelined head until here (uvicorn pauses reading)
        self._close_if_body_unread(self.conn.their_state is h11.SEND_BODY)
        if self.transport.is_closing():
            super().on_response_complete()  # type: ignore[misc]
            return
        self._await_next_head()
        super().on_response_complete()  # type: ignore[misc]
        pending = self.conn.trailing_data[0]  # a pipelined head h11 held back and has not parsed yet
        if self._reading_head and self.conn.their_state is h11.IDLE and pending:
            self._head_within_limits(pending)
        self._after_feed()
        self._one_idle_timer()


def limit_body(app: Any, limits: Limits) -> Any:
    """ASGI wrapper: 413 for a body over the cap, before the application has buffered more than the cap."""
    cap = limits.max_body_bytes

    async def refuse(send: Any, scope: Any, detail: str) -> None:
        client = scope.get("client") or ("?",)
        log.warning("%s: refused 413 from %s: %s", limits.listener, client[0], detail)
        body = f"413 {REASONS[413]}: {detail}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def limited(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            await refuse(send, scope, f"body of {int(length)} bytes over {cap}")
            return
        received, refused, started = 0, False, False

        async def counted_receive() -> Any:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    refused = True
                    if not started:
                        await refuse(send, scope, f"body over {cap} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if refused:  # the 413 went out; the application's answer to a cut-off body does not
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    return limited
