"""W3C trace context (https://www.w3.org/TR/trace-context/) across the lab's hops, and optional export
of each service's server spans to an OpenTelemetry collector.

- The client agent starts one trace per operation (join, AAD info, token, CCM_STS, location, download,
  registration, policy, renewal) and sends `traceparent` plus `tracestate: cmglab=dev:<device>;step:<step>`
  on every request of that operation (`TraceContext`, `operation`, `httpx_hook`).
- Every service records each request as one server span (`ServerSpan`: the incoming parent, a fresh span
  ID; a fresh trace when the caller sent none) and every call it makes on the request's behalf (CMG ->
  channel frame, connection point -> MP) carries the same trace with that span as parent (`propagate`).
- `cmglab` in `tracestate` follows OpenTelemetry's own `ot=k:v;k:v` convention: list-member values
  may not hold `,` or `=`, so the console groups hops by device and step with nothing non-standard.
- With `CMGLAB_OTLP_ENDPOINT` set, `SpanExporter` sends the recorded spans through the OpenTelemetry
  SDK (OTLP/HTTP, batched off the request path). Without it the SDK is never imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
VENDOR = "cmglab"  # our tracestate key


class Step(StrEnum):
    """The lab's one vocabulary of request steps: the agent's operations (what it puts in `tracestate`), and
    what `step_of` derives for a request the agent named none for. The console filters by these, the fleet
    times by them (`cmglab.tools.fleet.steps` adds a detail where one step holds two timings) and the
    reliability tools report by them."""

    JOIN = "join"
    AADINFO = "aadinfo"
    TOKEN = "token"
    CCMSTS = "ccmsts"
    LOCATION = "location"
    DOWNLOAD = "download"
    REGISTRATION = "registration"
    POLICY = "policy"
    RENEWAL = "renewal"
    # derived only (single requests outside an operation)
    DISCOVERY = "discovery"
    CRL = "crl"
    DDR = "ddr"
    MESSAGING = "messaging"


# the agent's operations, in onboarding order
STEPS = (
    Step.JOIN,
    Step.AADINFO,
    Step.TOKEN,
    Step.CCMSTS,
    Step.LOCATION,
    Step.DOWNLOAD,
    Step.REGISTRATION,
    Step.POLICY,
    Step.RENEWAL,
)

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_UNSAFE = re.compile(r"[^\x21-\x7e]|[,=;:]")  # what may not appear inside one of our sub-values
_MAX_MEMBERS = 32  # W3C: at most 32 list-members


# Trace and span IDs need to be unique, not secret (W3C trace context §"Privacy"): a fast PRNG, as the
# OpenTelemetry SDK's own RandomIdGenerator uses, instead of a getrandom() system call for every request.
# The module's generator: Python reseeds it in a forked child, so that worker processes never share IDs.


def new_trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"  # all zeros is the invalid ID


def new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


@dataclass(frozen=True)
class TraceParent:
    """The `traceparent` header: version 00, trace ID, the sender's span ID (parent-id), flags."""

    trace_id: str
    span_id: str
    flags: str = "01"  # sampled

    @classmethod
    def parse(cls, value: str | None) -> TraceParent | None:
        m = _TRACEPARENT.match((value or "").strip().lower())
        if not m or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
            return None
        trace_id, span_id = m.group(2), m.group(3)
        if trace_id == "0" * 32 or span_id == "0" * 16:
            return None
        return cls(trace_id, span_id, m.group(4))

    @classmethod
    def new(cls) -> TraceParent:
        return cls(new_trace_id(), new_span_id())

    def child(self) -> TraceParent:
        """The same trace, a new span of the sender's."""
        return TraceParent(self.trace_id, new_span_id(), self.flags)

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


# -- tracestate -------------------------------------------------------------------------------------
def _safe(value: str) -> str:
    return _UNSAFE.sub("_", value)[:64] or "_"


def cmglab_member(device: str, step: str) -> str:
    return f"{VENDOR}=dev:{_safe(device)};step:{_safe(step)}"


def with_cmglab(tracestate: str | None, device: str, step: str) -> str:
    """`tracestate` with our member first (W3C: the updating vendor moves to the left), others kept."""
    others = [m.strip() for m in (tracestate or "").split(",") if m.strip() and m.split("=", 1)[0].strip() != VENDOR]
    return ",".join([cmglab_member(device, step), *others][:_MAX_MEMBERS])


def cmglab_fields(tracestate: str | None) -> dict[str, str]:
    """`{"device": ..., "step": ...}` from our tracestate member (empty without one)."""
    for member in (tracestate or "").split(","):
        key, _, value = member.strip().partition("=")
        if key != VENDOR:
            continue
        fields = dict(part.partition(":")[::2] for part in value.split(";") if ":" in part)
        return {"device": fields.get("dev", ""), "step": fields.get("step", "")}
    return {}


# -- services ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerSpan:
    """One request as a service handles it: its own span in the caller's trace (or a new trace)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    flags: str
    tracestate: str | None

    @classmethod
    def incoming(cls, traceparent: str | None, tracestate: str | None) -> ServerSpan:
        parent = TraceParent.parse(traceparent)
        if parent is None:  # an untraced caller: the hops behind this service still share one trace
            return cls(new_trace_id(), new_span_id(), None, "01", None)
        return cls(parent.trace_id, new_span_id(), parent.span_id, parent.flags, tracestate or None)

    def outgoing(self) -> list[tuple[str, str]]:
        """Headers for a call made on this request's behalf: this span is the callee's parent."""
        headers = [(TRACEPARENT, TraceParent(self.trace_id, self.span_id, self.flags).header())]
        if self.tracestate:
            headers.append((TRACESTATE, self.tracestate))
        return headers

    def record_fields(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "tracestate": self.tracestate,
        }


def header_value(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def propagate(headers: list[tuple[str, str]], span: ServerSpan) -> list[tuple[str, str]]:
    """`headers` with the caller's trace headers replaced by this hop's."""
    kept = [(k, v) for k, v in headers if k.lower() not in (TRACEPARENT, TRACESTATE)]
    return kept + span.outgoing()


# -- the client agent -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceContext:
    """One client operation: a trace of its own, tagged with the device and the step."""

    root: TraceParent
    tracestate: str

    @classmethod
    def begin(cls, device: str, step: str) -> TraceContext:
        return cls(TraceParent.new(), with_cmglab(None, device, step))

    @classmethod
    def start(cls, device: str, step: str) -> dict[str, str]:
        """Headers for a one-request operation."""
        return cls.begin(device, step).headers()

    def headers(self) -> dict[str, str]:
        """Headers for one request of the operation: a new client span in the operation's trace."""
        return {TRACEPARENT: self.root.child().header(), TRACESTATE: self.tracestate}


_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar("cmglab_trace", default=None)


@contextlib.contextmanager
def operation(device: str, step: str) -> Iterator[TraceContext]:
    """Every request the agent makes inside the block belongs to one trace (see `httpx_hook`)."""
    ctx = TraceContext.begin(device, step)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


# CcmMessaging's header part is UTF-16LE XML naming the MP component the message is for
_CCM_TARGETS = tuple(
    (name.encode("utf-16-le"), step)
    for name, step in (
        ("MP_LocationManager", Step.LOCATION),
        ("MP_ClientRegistration", Step.REGISTRATION),
        ("MP_PolicyManager", Step.POLICY),
        ("MP_DdrEndpoint", Step.DDR),
    )
)
_PATH_STEPS = (
    ("aadauthinfo", Step.AADINFO),
    ("/ccm_sts", Step.CCMSTS),
    ("enrollmentserver", Step.JOIN),
    ("/oauth2/", Step.TOKEN),
    ("openid-configuration", Step.DISCOVERY),
    ("/userrealm", Step.DISCOVERY),
    ("/discover", Step.DISCOVERY),
    ("/crl/", Step.CRL),
    ("/aia/", Step.CRL),
    ("ccm_client", Step.DOWNLOAD),
    ("downloadrestservice", Step.DOWNLOAD),
    ("sms_mp", Step.POLICY),
)


def step_of(method: str, path: str, body: bytes = b"") -> str:
    """A request's step when the agent named none: good enough to group one-request operations."""
    p = path.lower()
    if "ccm_system" in p:
        return next((step for marker, step in _CCM_TARGETS if marker in body), Step.MESSAGING)
    return next((step for marker, step in _PATH_STEPS if marker in p), method.lower())


def httpx_hook(device: str) -> Callable[[httpx.Request], None]:
    """An httpx `event_hooks={"request": [...]}` entry: trace headers on every request the device sends,
    from the enclosing `operation(...)`, else a one-request trace named by `step_of`."""

    def hook(request: httpx.Request) -> None:
        ctx = _current.get()
        if ctx is None:
            try:
                body = bytes(request.content)
            except httpx.RequestNotRead:  # a streamed body: the path alone decides
                body = b""
            ctx = TraceContext.begin(device, step_of(request.method, request.url.path, body))
        request.headers.update(ctx.headers())

    return hook


# -- OpenTelemetry export ---------------------------------------------------------------------------
class SpanExporter:
    """Recorded requests -> OTLP/HTTP server spans. The SDK is imported only when this is built."""

    def __init__(self, endpoint: str, service: str) -> None:
        import atexit

        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        # batched on the SDK's own thread: a slow or absent collector never delays a request
        self.processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=url), schedule_delay_millis=500)
        self.resource = Resource.create({"service.name": service, "service.namespace": "cmglab"})
        atexit.register(self.processor.shutdown)

    def export(self, entry: dict[str, Any]) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace.status import Status, StatusCode

        if not entry.get("trace_id") or not entry.get("span_id"):
            return
        end = _ns(entry.get("time"))
        start = end - int(float(entry.get("elapsed_ms") or 0) * 1e6)
        flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        context = trace.SpanContext(
            int(entry["trace_id"], 16), int(entry["span_id"], 16), is_remote=False, trace_flags=flags
        )
        parent = None
        if entry.get("parent_span_id"):
            parent = trace.SpanContext(
                int(entry["trace_id"], 16), int(entry["parent_span_id"], 16), is_remote=True, trace_flags=flags
            )
        status = int(entry.get("status") or 0)
        span = ReadableSpan(
            name=f"{entry.get('method', '')} {entry.get('path', '')}",
            context=context,
            parent=parent,
            resource=self.resource,
            kind=trace.SpanKind.SERVER,
            attributes=span_attributes(entry),
            status=Status(StatusCode.ERROR if status >= 500 or entry.get("error") else StatusCode.UNSET),
            start_time=start,
            end_time=end,
        )
        self.processor.on_end(span)


def span_attributes(entry: dict[str, Any]) -> dict[str, str | int | float]:
    names = {
        "method": "http.request.method",
        "url": "url.full",
        "status": "http.response.status_code",
        "request_bytes": "http.request.body.size",
        "response_bytes": "http.response.body.size",
        "rewritten_url": "cmglab.rewritten_url",
        "auth_kind": "cmglab.auth_kind",
        "auth_subject": "cmglab.auth_subject",
        "client_cert_subject": "tls.client.subject",
        "reason": "cmglab.reason",
        "error": "error.type",
    }
    attrs: dict[str, str | int | float] = {
        attr: entry[key] for key, attr in names.items() if isinstance(entry.get(key), str | int | float)
    }
    attrs.update({f"cmglab.{k}": v for k, v in cmglab_fields(entry.get("tracestate")).items()})
    return attrs


def _ns(iso: str | None) -> int:
    if not iso:
        return time.time_ns()
    return int(datetime.fromisoformat(iso).timestamp() * 1e9)
