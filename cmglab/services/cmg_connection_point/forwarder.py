"""One request from the CMG: rewrite its URL to the internal MP, call the MP over mutual TLS with the
point's own client-authentication certificate, stream the reply back over the channel.

For a MutualAuth request the client's certificate (verified by the CMG) goes to the MP in
`Client-Cert: :<base64 DER>:` (RFC 9440); a header of that name from the client never passes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from cryptography import x509

from cmglab.runtime.admin import LabState
from cmglab.services.cmg_connection_point.errors import ForwardError
from cmglab.services.cmg_connection_point.rewrite import Rewrite, RewriteError, rewrite
from cmglab.services.cmg_connection_point.upstream import Upstream, UpstreamError, UpstreamTimeout
from cmglab.wire.cloud_config import CloudConfig
from cmglab.wire.cmg_channel import (
    CHUNK,
    CLIENT_CERT_HEADER,
    Kind,
    RequestHead,
    ResponseHead,
    encode,
    encode_whole,
    end_to_end,
)
from cmglab.wire.cmg_channel import chunks as chunk_bytes
from cmglab.wire.kinds import AuthKind
from cmglab.wire.requests import RequestRecord
from cmglab.wire.tracing import TRACEPARENT, TRACESTATE, ServerSpan, header_value, propagate

Send = Callable[[bytes], Awaitable[None]]
BodyItem = bytes | None | BaseException  # a chunk, the end, or an abort from the CMG

_DROP = frozenset({"client-cert", "client-cert-chain"})
REWRITES = 1024  # rewritten URLs remembered (a query string makes a URL of its own)


def _auth_kind(value: str | None) -> AuthKind | None:
    try:
        return AuthKind(value) if value else None
    except ValueError:  # a kind this point does not know (a newer CMG): not recorded
        return None


@functools.lru_cache(maxsize=1024)  # a MutualAuth client sends the same certificate with every request
def _subject_of(b64: str | None) -> str | None:
    if not b64:
        return None
    try:
        return x509.load_der_x509_certificate(base64.b64decode(b64)).subject.rfc4514_string()
    except ValueError:
        return None


class Forwarder:
    def __init__(
        self,
        upstream: Upstream,
        log: logging.Logger,
        state: LabState,
        *,
        name: str,
        cmg_name: str,
        max_body: int,
        timeout: float,
    ) -> None:
        self.upstream, self.log, self.state = upstream, log, state
        self.cmg_name = cmg_name  # the only authority a forwarded URL may name
        self.name, self.max_body, self.timeout = name, max_body, timeout
        # rewrite() is a function of the URL and the site's configuration: its answers for the configuration
        # object in use (a new one, each heartbeat's, starts afresh); refusals are worked out each time
        self._rewrites: dict[str, Rewrite] = {}
        self._rewrites_for: CloudConfig | None = None

    def _rewrite(self, url: str, config: CloudConfig | None) -> Rewrite:
        if config is not self._rewrites_for or len(self._rewrites) >= REWRITES:
            self._rewrites, self._rewrites_for = {}, config
        rw = self._rewrites.get(url)
        if rw is None:
            rw = self._rewrites[url] = rewrite(url, config, self.cmg_name)
        return rw

    async def handle(
        self,
        msg_id: uuid.UUID,
        head: RequestHead,
        body: asyncio.Queue[BodyItem] | bytes,
        send: Send,
        config: CloudConfig | None,
        cmg: str,
        *,
        whole_replies: bool = False,
    ) -> None:
        """`body`: the request's body frames as they come, or the whole body (a REQUEST_WHOLE frame);
        `whole_replies`: the CMG reads RESPONSE_WHOLE frames (channel version 2)."""
        started = time.perf_counter()
        sizes = {"in": len(body) if isinstance(body, bytes) else 0, "out": 0}
        traceparent = header_value(head.headers, TRACEPARENT)
        span = ServerSpan.incoming(traceparent, header_value(head.headers, TRACESTATE))
        rec = RequestRecord(
            started_at=time.time(),
            auth_kind=_auth_kind(head.auth_kind),
            connection_point=self.name,
        )
        rec.note(message_id=str(msg_id), cmg=cmg, client_cert_forwarded=head.client_cert is not None)
        status = 0
        rw: Rewrite | None = None
        try:
            try:
                rw = self._rewrite(head.url, config)
            except RewriteError as e:
                raise ForwardError(404, str(e)) from e
            rec.rewritten_url = rw.internal_url
            self.log.info(rw.log_line())
            status, reason = await self._call(msg_id, head, rw, body, send, sizes, span, whole_replies)
            elapsed = round((time.perf_counter() - started) * 1000)
            self.log.info(
                f"MessageID: {msg_id} RequestURI: {rw.internal_url} EndpointName: {rw.endpoint} "
                f"ResponseHeader: HTTP/1.1 {status} {reason} \n ResponseBodySize: {sizes['out']} "
                f"ElapsedTime: {elapsed} ms"
            )
        except ForwardError as e:
            status, rec.error = e.status, e.reason
            target = rw.internal_url if rw else head.url
            self.log.warning(f"MessageID: {msg_id} RequestURI: {target} failed: {e.status} {e.reason}")
            try:
                await send(e.frame(msg_id))
            except Exception as send_error:
                rec.error += f"; channel: {send_error}"
        except asyncio.CancelledError:
            status, rec.error = 499, "cancelled: the CMG aborted the request or the channel closed"
            self.log.warning(
                f"MessageID: {msg_id} RequestURI: {rw.internal_url if rw else head.url} cancelled "
                "(aborted by the CMG or the channel closed)"
            )
            raise
        except Exception as e:  # the channel went away under the reply: nobody left to tell
            status = status or 502
            rec.error = f"{type(e).__name__}: {e}"
            self.log.warning(
                f"MessageID: {msg_id} RequestURI: {rw.internal_url if rw else head.url} failed: "
                f"channel lost while replying: {rec.error}"
            )
        finally:
            self.state.add(self._finished(head, rec, span, traceparent, status, sizes, started))

    @staticmethod
    def _finished(
        head: RequestHead,
        rec: RequestRecord,
        span: ServerSpan,
        traceparent: str | None,
        status: int,
        sizes: dict[str, int],
        started: float,
    ) -> RequestRecord:
        """The hop's record with the recorder middleware's fields: ended when the hop ended (start = time -
        elapsed); the routes' part was written on the way."""
        rec.ended_at = time.time()
        rec.service, rec.method, rec.url = "cmg-connection-point", head.method, head.url
        rec.path = "/" + head.url.split("://", 1)[-1].partition("/")[2].split("?", 1)[0]
        rec.status, rec.request_bytes, rec.response_bytes = status, sizes["in"], sizes["out"]
        rec.elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        rec.client_cert_subject, rec.traceparent = _subject_of(head.client_cert), traceparent
        rec.trace_id, rec.span_id, rec.parent_span_id, rec.tracestate = (
            span.trace_id,
            span.span_id,
            span.parent_span_id,
            span.tracestate,
        )
        return rec

    async def _body(self, body: asyncio.Queue[BodyItem], sizes: dict[str, int]) -> AsyncIterator[bytes]:
        while True:
            item = await body.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            sizes["in"] += len(item)
            yield item

    async def _call(
        self,
        msg_id: uuid.UUID,
        head: RequestHead,
        rw: Rewrite,
        body: asyncio.Queue[BodyItem] | bytes,
        send: Send,
        sizes: dict[str, int],
        span: ServerSpan,
        whole_replies: bool,
    ) -> tuple[int, str]:
        fault = (
            self.state.match_fault(head.method, "/" + rw.internal_url.split("://", 1)[-1].partition("/")[2])
            if self.state.faults
            else None
        )
        if fault is not None:
            if fault.rule.delay_ms:
                await asyncio.sleep(fault.rule.delay_ms / 1000)
            if fault.rule.status is not None:
                raise ForwardError(fault.rule.status, "fault injected at the connection point")
            if fault.rule.drop:
                raise ForwardError(502, "fault injected at the connection point: dropped")
        headers = propagate(end_to_end(head.headers, drop=_DROP), span)  # the MP's parent is this hop
        if head.client_cert:
            headers.append((CLIENT_CERT_HEADER, f":{head.client_cert}:"))
        content: bytes | AsyncIterator[bytes] | None
        if isinstance(body, bytes):
            content = body if head.has_body else None
        else:
            content = self._body(body, sizes) if head.has_body else None
        try:
            response = await self.upstream.request(head.method, rw.internal_url, headers, content)
        except UpstreamTimeout as e:
            raise ForwardError(504, f"the management point did not answer within {self.timeout:g} s ({e})") from e
        except UpstreamError as e:
            raise ForwardError(502, f"could not reach the management point {rw.internal_base}: {e}") from e
        try:
            length = response.content_length  # one digit string or none (upstream checked)
            if length is not None and length > self.max_body:
                raise ForwardError(502, f"the management point's reply of {length} bytes exceeds {self.max_body}")
            reply = ResponseHead(
                response.status_code,
                response.reason_phrase,
                response.headers,
                internal_url=rw.internal_url,
                connection_point=self.name,
            )
            try:
                if whole_replies and length is not None and length <= CHUNK:
                    # a reply of known small size goes in one frame with its head (a streamed one as it comes)
                    whole = await response.read()
                    sizes["out"] = len(whole)
                    frame = encode_whole(Kind.RESPONSE_WHOLE, msg_id, reply.to_json(), whole)
                    if frame is not None:
                        await send(frame)
                        return response.status_code, response.reason_phrase
                    await send(encode(Kind.RESPONSE, msg_id, reply.to_json()))
                    for piece in chunk_bytes(whole):
                        await send(encode(Kind.RESPONSE_BODY, msg_id, piece))
                else:
                    await send(encode(Kind.RESPONSE, msg_id, reply.to_json()))
                async for chunk in response.body():  # none left when read whole
                    sizes["out"] += len(chunk)
                    if sizes["out"] > self.max_body:
                        raise ForwardError(502, f"the management point's reply exceeds {self.max_body} bytes")
                    await send(encode(Kind.RESPONSE_BODY, msg_id, chunk))
            except UpstreamTimeout as e:
                raise ForwardError(504, f"the management point stopped sending its reply for {self.timeout:g} s") from e
            except UpstreamError as e:
                raise ForwardError(502, f"the management point's reply broke off: {e}") from e
            await send(encode(Kind.RESPONSE_END, msg_id))
            return response.status_code, response.reason_phrase
        finally:
            await response.aclose()
