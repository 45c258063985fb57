"""Send one client request through a connection point's channel and stream its reply back.

Fail fast: no point connected -> 503 at once; the point's channel drops before the reply starts ->
502 (after it started: the client connection is cut, never a silently short body); no reply head in
time -> 504; request body over the limit -> 413; reply body over the limit -> cut; a one-frame body not
received within the timeout -> 408 and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from cmglab.runtime.admin import current_span
from cmglab.services.cmg.channel import Aborted, ChannelClosed, Hub, Stream
from cmglab.services.cmg.errors import CMGError, body_timeout, no_point
from cmglab.wire.cmg_channel import CHUNK, HOP_BY_HOP, RequestHead, ResponseHead, end_to_end
from cmglab.wire.cmg_urls import ProxyTarget
from cmglab.wire.kinds import AuthKind
from cmglab.wire.requests import RequestRecord
from cmglab.wire.tracing import TRACEPARENT, TRACESTATE, ServerSpan

# a client may not speak for the CMG: identity headers come from the CMG's own checks only
_DROP_FROM_CLIENT = frozenset(
    {"client-cert", "client-cert-chain", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
)
# never taken from the client's request: hop-by-hop headers, the identity headers above and the client's trace
# headers (the frame carries the CMG's span instead); ASGI header names are lower case bytes
_NOT_FORWARDED = frozenset(name.encode() for name in HOP_BY_HOP | _DROP_FROM_CLIENT | {TRACEPARENT, TRACESTATE})
# the channel's own margin: the point cuts the MP off at upstream_timeout and says so first
CHANNEL_MARGIN = 5.0


class BodyTooLarge(Exception):
    pass


async def _pump(request: Request, stream: Stream, limit: int) -> int:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        if chunk:
            await stream.send_body(chunk)
    await stream.send_end()
    return total


async def _read_whole(request: Request, length: int | None, chunked: bool) -> bytes | None:
    """The body of a request small enough for one channel frame (read before anything is sent), or None: a
    chunked or a larger body streams."""
    if chunked or (length or 0) > CHUNK:
        return None
    if not length:  # neither Content-Length nor chunked: no body (RFC 9112 §6.3)
        return b""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return bytes(body)


async def _settle(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel the helper tasks of a request and wait for them, their outcome (an error included) retrieved:
    nothing of a finished request keeps running. A cancellation of the caller itself still propagates."""
    pending = [t for t in tasks if t is not None]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


def _forwarded_headers(raw: list[tuple[bytes, bytes]], span: ServerSpan) -> list[tuple[str, str]]:
    """The client's end-to-end headers in one pass (`end_to_end` then `propagate`, as they were): this hop's
    trace headers last."""
    kept = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k.lower() not in _NOT_FORWARDED]
    return kept + span.outgoing()


def _raw_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in end_to_end(headers)]


class Proxy:
    def __init__(self, hub: Hub, log: logging.Logger, *, name: str, max_body: int, timeout: float) -> None:
        self.hub, self.log, self.name, self.max_body, self.timeout = hub, log, name, max_body, timeout

    async def forward(
        self, request: Request, route: ProxyTarget, *, auth_kind: AuthKind, client_cert: str | None, rec: RequestRecord
    ) -> Response:
        """Forward the request whose `route` was authorised: the URL sent on is built from that route's parts
        and this gateway's name only, and recorded as `forwarded_url`."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            raise CMGError(413, "RequestTooLarge", f"request body of {length} bytes exceeds {self.max_body}")
        point = self.hub.pick()
        if point is None:
            raise no_point()
        rec.connection_point = point.label
        url = rec.forwarded_url = route.url(self.name)
        head = RequestHead(
            method=request.method,
            url=url,
            # the frame carries the client's trace on, with the CMG's span as the point's parent
            headers=_forwarded_headers(request.scope["headers"], current_span(request)),
            client_cert=client_cert,
            client=request.client.host if request.client else None,
            auth_kind=auth_kind,
            content_length=int(length) if length and length.isdigit() else None,
            has_body=(length is not None and length != "0") or "transfer-encoding" in request.headers,
        )
        # a small body is read first and goes with its head in one frame; a large or chunked one streams
        try:  # bounded: a client that declares a body and stalls holds nothing past the timeout
            async with asyncio.timeout(self.timeout):
                whole = await _read_whole(request, head.content_length, "transfer-encoding" in request.headers)
        except TimeoutError:
            raise body_timeout(self.timeout, head.content_length) from None
        stream = point.open_stream()
        pump: asyncio.Task[int] | None = None
        reply: asyncio.Task[ResponseHead] | None = None
        try:
            if whole is not None:
                await stream.send_whole(head, whole)
                response_head = await stream.response(self.timeout + CHANNEL_MARGIN)
            else:
                await stream.send_head(head)
                pump = asyncio.create_task(_pump(request, stream, self.max_body))
                reply = asyncio.create_task(stream.response(self.timeout + CHANNEL_MARGIN))
                await asyncio.wait({pump, reply}, return_when=asyncio.FIRST_COMPLETED)
                if pump.done() and pump.exception() is not None and not reply.done():
                    reply.cancel()
                    raise pump.exception()  # type: ignore[misc]
                response_head = await reply
        except BodyTooLarge as e:
            await stream.abort(413, str(e))
            stream.close()
            await _settle(pump, reply)
            raise CMGError(413, "RequestTooLarge", str(e)) from e
        except ClientDisconnect:
            await stream.abort(499, "client went away")
            stream.close()
            await _settle(pump, reply)
            raise
        except ChannelClosed as e:
            stream.close()
            await _settle(pump, reply)
            self.log.warning(f"Request {request.method} {url} failed: connection point {point.label} dropped: {e}")
            raise CMGError(502, "ConnectionPointLost", f"the connection point dropped the request: {e}") from e
        except Aborted as e:
            await stream.abort(e.status, e.reason)
            stream.close()
            await _settle(pump, reply)
            self.log.warning(f"Request {request.method} {url} failed at {point.label}: {e.status} {e.reason}")
            raise CMGError(e.status, "UpstreamError" if e.status != 504 else "UpstreamTimeout", e.reason) from e
        except BaseException:
            await stream.abort(502, "CMG error")
            stream.close()
            await _settle(pump, reply)
            raise
        rec.rewritten_url = response_head.internal_url
        if response_head.connection_point:
            rec.connection_point = f"{response_head.connection_point}#{point.id}"
        if stream.whole_body is not None:  # the whole reply came in one frame: no streaming needed
            stream.close()
            await _settle(pump)  # an early answer (a 4xx before the whole upload): stop sending its body
            if len(stream.whole_body) > self.max_body:
                raise CMGError(502, "UpstreamError", f"reply body exceeds {self.max_body} bytes")
            whole_reply = Response(stream.whole_body, status_code=response_head.status)
            whole_reply.raw_headers = _raw_headers(response_head.headers)
            return whole_reply

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            try:
                async for chunk in stream.body(self.timeout + CHANNEL_MARGIN):
                    sent += len(chunk)
                    if sent > self.max_body:
                        raise Aborted(502, f"reply body exceeds {self.max_body} bytes")
                    yield chunk
            except (ChannelClosed, Aborted) as e:
                self.log.warning(f"Reply to {request.method} {url} cut after {sent} bytes: {e}")
                raise
            finally:
                await stream.abort(499, "client went away")  # no-op when the reply completed
                stream.close()
                await _settle(pump)

        response = StreamingResponse(body(), status_code=response_head.status)
        response.raw_headers = _raw_headers(response_head.headers)
        return response
