"""What every service has besides its protocol (docs/protocol-notes.md, Lab §5):

- `GET /_lab/health` (no auth), for compose health checks;
- `GET /_lab/requests`: the recorded requests, newest first, bounded;
- `GET /_lab/openapi.json`: the OpenAPI of the routes that declare a schema (what schemathesis fuzzes);
- `POST /_lab/reset` and `GET|POST|DELETE /_lab/faults`, guarded by the lab admin token
  (`Authorization: Bearer <admin-token>`).

The recorder and the fault injector are plain ASGI middleware around the whole app. Each record is
also the request's server span (`cmglab.runtime.tracing`): trace and span IDs, the caller's span, the
`tracestate`; with `CMGLAB_OTLP_ENDPOINT` set it is exported to an OpenTelemetry collector as well.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel

from cmglab.runtime.certinfo import parsed, subject, thumbprint
from cmglab.runtime.lab import Lab
from cmglab.wire.requests import RequestRecord
from cmglab.wire.tracing import TRACEPARENT, TRACESTATE, ServerSpan, SpanExporter

RECORD_KEY = "cmglab.record"
SPAN_KEY = "cmglab.span"
# an error reply's JSON body is read up to this size for the reason a service gave (the console shows it)
_REASON_BODY_MAX = 8192
ADMIN_PREFIX = "/_lab/"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def record(request: Request) -> RequestRecord:
    """The current request's record (`cmglab.wire.requests`): routes note who called and what became of it."""
    rec = request.scope.get(RECORD_KEY)
    if rec is None:
        rec = request.scope[RECORD_KEY] = RequestRecord()
    assert isinstance(rec, RequestRecord)
    return rec


def current_span(request: Request) -> ServerSpan:
    """The request's server span: what a call made on its behalf carries on (`tracing.propagate`)."""
    span = request.scope.get(SPAN_KEY)
    if span is None:  # an app without the recorder (unit tests): a span of its own
        span = request.scope[SPAN_KEY] = ServerSpan.incoming(
            request.headers.get(TRACEPARENT), request.headers.get(TRACESTATE)
        )
    return span


class FaultRule(BaseModel):
    path: str  # regular expression, searched in the path, case-insensitive
    method: str | None = None
    delay_ms: int = 0
    status: int | None = None  # answer this status instead of calling the service
    drop: bool = False  # start the reply, then drop the connection
    times: int | None = None  # how many requests it applies to (None: until removed)


@dataclass
class _Fault:
    id: int
    rule: FaultRule
    pattern: re.Pattern[str] = field(repr=False)
    hits: int = 0


class LabState:
    """Recorded requests and fault rules of one process."""

    def __init__(self, service: str, size: int, exporter: SpanExporter | None = None) -> None:
        self.service = service
        self.requests: deque[RequestRecord] = deque(maxlen=size)
        self.faults: list[_Fault] = []
        self._ids = itertools.count(1)
        self.last_seq = 0  # never reset: a reader polls with ?after=<the last seq it saw>
        self.exporter = exporter
        self.observers: list[Callable[[RequestRecord], None]] = []  # e.g. the CMG's per-URI summaries

    def add(self, rec: RequestRecord) -> None:
        """Record one request (newest first) and export it as a span when a collector is configured."""
        self.last_seq += 1
        rec.seq = self.last_seq
        self.requests.appendleft(rec)
        if self.exporter is not None:
            self.exporter.export(rec.as_dict())
        for observe in self.observers:
            observe(rec)

    def add_fault(self, rule: FaultRule) -> _Fault:
        fault = _Fault(next(self._ids), rule, re.compile(rule.path, re.IGNORECASE))
        self.faults.append(fault)
        return fault

    def match_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self.faults:
            if fault.rule.method and fault.rule.method.upper() != method.upper():
                continue
            if not fault.pattern.search(path):
                continue
            fault.hits += 1
            if fault.rule.times is not None and fault.hits >= fault.rule.times:
                self.faults.remove(fault)
            return fault
        return None

    def clear(self) -> None:
        self.requests.clear()
        self.faults.clear()


def _external_url(scope: Scope, host: str) -> str:
    path = (scope.get("raw_path") or b"").decode("latin-1") or scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    if path.lower().startswith(("http://", "https://")):  # an absolute-form target (RFC 9112 §3.2.2) is the URL
        return path + (f"?{query}" if query else "")
    return f"{scope.get('scheme', 'https')}://{host}{path}" + (f"?{query}" if query else "")


def _cert_names(scope: Scope) -> tuple[str | None, str | None]:
    """The client certificate's subject and thumbprint, worked out once per certificate (among the latest 1,024):
    not kept by each idle keep-alive connection (issue 20)."""
    tls = scope.get("extensions", {}).get("tls")
    if not tls or not tls.get("client_cert_der"):
        return None, None
    return _names_of(tls["client_cert_der"])


@functools.lru_cache(maxsize=1024)
def _names_of(der: bytes) -> tuple[str | None, str | None]:
    cert = parsed(der)
    return subject(cert), thumbprint(cert)


class _Exchange:
    """One request on its way through the recorder: counts what goes in and out and records it once."""

    __slots__ = ("error_body", "rec", "receive", "recorded", "scope", "send", "started", "state")

    def __init__(self, state: LabState, scope: Scope, receive: Receive, send: Send, rec: RequestRecord) -> None:
        self.state, self.scope, self.receive, self.send, self.rec = state, scope, receive, send, rec
        self.started = time.perf_counter()
        self.error_body = b""
        self.recorded = False

    async def counting_receive(self) -> dict[str, Any]:
        message = await self.receive()
        body = message.get("body")
        if body:
            self.rec.request_bytes += len(body)
        return message

    async def counting_send(self, message: dict[str, Any]) -> None:
        rec = self.rec
        if message["type"] == "http.response.start":
            rec.status = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            rec.response_bytes += len(body)
            if rec.status >= 400 and len(self.error_body) < _REASON_BODY_MAX:
                self.error_body += body[: _REASON_BODY_MAX - len(self.error_body)]
            if not message.get("more_body", False):
                # recorded before the client holds the whole reply, so that what it asks next sees it
                self.finish(None)
        await self.send(message)

    def finish(self, error: str | None) -> None:
        if self.recorded:
            return
        self.recorded = True
        rec = self.rec
        rec.ended_at = time.time()
        rec.elapsed_ms = round((time.perf_counter() - self.started) * 1000, 3)
        if not rec.status and error:
            rec.status = 500
        if error:
            rec.error = error
        if self.error_body:
            rec.reason = error_reason(self.error_body)
        self.state.add(rec)


class LabMiddleware:
    """Records every request (except /_lab/ ones) and applies matching fault rules."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: LabState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        rec: RequestRecord = scope.setdefault(RECORD_KEY, RequestRecord())
        rec.started_at = time.time()  # order of arrival
        self._begin(scope, rec)
        exchange = _Exchange(self.state, scope, receive, send, rec)
        error: str | None = None
        try:
            fault = self.state.match_fault(scope["method"], scope["path"]) if self.state.faults else None
            if fault is not None:
                rec.fault = fault.id
                if fault.rule.delay_ms:
                    await asyncio.sleep(fault.rule.delay_ms / 1000)
                if fault.rule.drop:
                    await exchange.counting_send(
                        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1024")]}
                    )
                    raise ConnectionAbortedError("fault injection: connection dropped")
                if fault.rule.status is not None:
                    await _plain(exchange.counting_send, fault.rule.status, b"fault injected by cmglab\n")
                    return
            await self.app(scope, exchange.counting_receive, exchange.counting_send)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            exchange.finish(error)

    def _begin(self, scope: Scope, rec: RequestRecord) -> None:
        """What the request says of itself: who sent it, how it addressed the service, its trace context."""
        traceparent = tracestate = user_agent = host = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
        span = scope[SPAN_KEY] = ServerSpan.incoming(traceparent, tracestate)
        rec.service, rec.method, rec.path = self.state.service, scope["method"], scope["path"]
        rec.url = _external_url(scope, host or "")
        rec.traceparent, rec.user_agent = traceparent or None, user_agent or None
        rec.trace_id, rec.span_id, rec.parent_span_id, rec.tracestate = (
            span.trace_id,
            span.span_id,
            span.parent_span_id,
            span.tracestate,
        )
        rec.client_cert_subject, rec.client_cert_thumbprint = _cert_names(scope)
        tls = scope.get("extensions", {}).get("tls")
        if tls:
            rec.tls_resumed = tls.get("session_reused")


def error_reason(body: bytes) -> str | None:
    """The reason in an error reply's JSON (`Reason`, AADSTS `error_description`, FastAPI `detail`)."""
    try:
        doc = json.loads(body) if body[:1] == b"{" else None
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    code = doc.get("Error") or doc.get("error")
    text = doc.get("Reason") or doc.get("error_description") or doc.get("detail")
    parts = [str(p).splitlines()[0] for p in (code, text) if p and isinstance(p, str | int)]
    return ": ".join(parts)[:300] or None


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def require_admin(lab: Lab) -> Callable[..., None]:
    """A FastAPI dependency: the request must carry `Authorization: Bearer <lab admin token>`."""
    token = lab.admin_token()

    def check(authorization: str | None = Header(default=None)) -> None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not given or not secrets.compare_digest(given, token):
            raise HTTPException(
                401,
                "the lab admin token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def lab_state(service: str, lab: Lab) -> LabState:
    """A service's recorded requests and fault rules, sized and exported as the lab's settings say."""
    endpoint = lab.settings.otlp_endpoint
    return LabState(service, lab.settings.request_log_size, SpanExporter(endpoint, service) if endpoint else None)


def install_lab_admin(
    app: FastAPI,
    *,
    service: str,
    lab: Lab,
    reset: Callable[[], Any] | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
    private: bool = False,
    state: LabState | None = None,
) -> LabState:
    """Add the /_lab endpoints and the recorder/fault middleware to a service's app. `private`: a listener
    on the internet (the CMG's client listener), where every /_lab endpoint but health needs the admin token:
    the recorded requests hold every client's identity and replayable signed content URLs. `state`: one made
    beforehand with `lab_state`, for parts that record requests themselves (the connection point's)."""
    state = state or lab_state(service, lab)
    admin_only = require_admin(lab)
    lab_id = lab.lab_id()
    reads = [Depends(admin_only)] if private else []

    router = APIRouter(prefix="/_lab", tags=["lab"])

    @router.get("/health")
    async def lab_health() -> dict[str, Any]:
        return {"service": service, "status": "ok", "lab_id": lab_id, **(health() if health else {})}

    @router.get("/requests", dependencies=reads)
    async def lab_requests(limit: int = 200, path: str | None = None, after: int = 0) -> dict[str, Any]:
        items = [r for r in state.requests if r.seq > after] if after else list(state.requests)
        if path:
            try:
                pattern = re.compile(path, re.IGNORECASE)
            except re.error as e:
                raise HTTPException(422, f"bad path pattern: {e}") from e
            items = [r for r in items if pattern.search(r.path or "")]
        chosen = items[: max(0, min(limit, len(items)))]
        return {"service": service, "requests": [r.as_dict() for r in chosen], "last_seq": state.last_seq}

    @router.post("/reset", dependencies=[Depends(admin_only)])
    async def lab_reset() -> dict[str, str]:
        if reset is not None:
            result = reset()
            if inspect.isawaitable(result):
                await result
        state.clear()
        return {"service": service, "status": "reset"}

    @router.get("/openapi.json", include_in_schema=False, dependencies=reads)
    async def lab_openapi() -> dict[str, Any]:
        """The app's own OpenAPI for the routes that declare a schema (the services turn FastAPI's
        /openapi.json off, as the real products have none): what the reliability campaign fuzzes.
        The wire-protocol routes (CcmMessaging, CCM_STS, the CMG's proxy) opt out with
        include_in_schema=False; their hostile inputs are the campaign's hand-made corpus."""
        return app.openapi()  # FastAPI builds it from the routes with include_in_schema (the default)

    @router.get("/faults", dependencies=reads)
    async def list_faults() -> dict[str, Any]:
        return {"faults": [{"id": f.id, "hits": f.hits, **f.rule.model_dump()} for f in state.faults]}

    @router.post("/faults", dependencies=[Depends(admin_only)], status_code=201)
    async def add_fault(rule: FaultRule) -> dict[str, Any]:
        try:
            fault = state.add_fault(rule)
        except re.error as e:
            raise HTTPException(422, f"bad path pattern: {e}") from e
        return {"id": fault.id, **rule.model_dump()}

    @router.delete("/faults", dependencies=[Depends(admin_only)])
    async def clear_faults() -> dict[str, int]:
        n = len(state.faults)
        state.faults.clear()
        return {"removed": n}

    app.include_router(router)
    app.add_middleware(LabMiddleware, state=state)
    app.state.lab = state
    return state
