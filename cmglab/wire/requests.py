"""The request record: what a service keeps of each request it answers (`GET /_lab/requests`), read by
the console (its traces), the reliability tools (their findings and timings) and the tests.

The recorder (`cmglab.runtime.admin`) fills what every request has (method, URL, status, sizes, timing, the
client certificate, the trace context); the routes fill what only they know (who the caller was and how it
authenticated, what became of the request). Both write one typed `RequestRecord`, kept as it is (no JSON is
made on the request's path); a reader gets it as one JSON object (`Recorded`), where fields nothing was learnt
of are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypedDict

from cmglab.wire.kinds import AuthKind

# the recorder's fields every recorded request shows, null when unknown (the others are left out when unknown)
_ALWAYS = frozenset(
    {"client_cert_subject", "client_cert_thumbprint", "traceparent", "user_agent", "parent_span_id", "tracestate"}
)


def _iso(when: float, timespec: str) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec=timespec)


@dataclass(slots=True)
class RequestRecord:
    """One request as its service keeps it. The recorder fills the first fields as the request arrives and
    ends; the routes note who the caller was and what became of it (`cmglab.runtime.admin.record(request)`).
    Kept as it is until someone reads it: `as_dict` makes the JSON object (`Recorded`)."""

    # the recorder's
    seq: int = 0  # per process, never reset: a reader polls with ?after=<the last seq it saw>
    service: str | None = None
    method: str | None = None
    url: str | None = None  # as the client addressed it (scheme, Host, raw path, query)
    path: str | None = None
    status: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    elapsed_ms: float | None = None
    client_cert_subject: str | None = None
    client_cert_thumbprint: str | None = None
    tls_resumed: bool | None = None  # whether the connection's TLS session was resumed (None: plain HTTP)
    traceparent: str | None = None  # as received
    user_agent: str | None = None
    trace_id: str | None = None  # the server span (cmglab.wire.tracing.ServerSpan)
    span_id: str | None = None
    parent_span_id: str | None = None
    tracestate: str | None = None
    reason: str | None = None  # an error reply's reason, read from its JSON body
    started_at: float | None = None  # time.time() of arrival: `started` in the JSON
    ended_at: float | None = None  # time.time() the reply ended: `time` in the JSON
    fault: int | None = None  # the /_lab/faults rule that applied
    # the routes'
    auth_kind: AuthKind | None = None  # how the caller was authenticated
    auth_subject: str | None = None  # who it was (a UPN, a device ID, a certificate subject, ...)
    via: str | None = None  # "connection-point": the MP saw it through the CMG and a connection point
    result: str | None = None  # the service's verdict on a request it refused or answered specially
    refused: str | None = None  # the refusal's code (CMG: its Error code; DP: status.substatus)
    error: str | None = None  # what went wrong, when the service's answer names an error
    forwarded_url: str | None = None  # CMG: the URL it sent down the channel
    rewritten_url: str | None = None  # CMG, connection point: the MP URL the request became
    connection_point: str | None = None  # CMG: the point that carried it
    details: dict[str, Any] = field(default_factory=dict)  # protocol details (token claims, device IDs, ...)

    def authenticated(self, kind: AuthKind, subject: str | None = None) -> None:
        self.auth_kind, self.auth_subject = kind, subject

    def update(
        self,
        *,
        auth_kind: AuthKind | None = None,
        auth_subject: str | None = None,
        error: str | None = None,
        result: str | None = None,
        **details: Any,
    ) -> None:
        """Set the fields given (None leaves a field as it is); other names are protocol details."""
        for name, value in (
            ("auth_kind", auth_kind),
            ("auth_subject", auth_subject),
            ("error", error),
            ("result", result),
        ):
            if value is not None:
                setattr(self, name, value)
        self.details.update(details)

    def note(self, **details: Any) -> None:
        """Protocol details beyond the common fields (Entra: `amr`, `appid`, `device_id`, ...)."""
        self.details.update(details)

    def as_dict(self) -> dict[str, Any]:
        """The record as `GET /_lab/requests` shows it (`Recorded`): unknown fields left out, but for the
        recorder's that are null when unknown; then the protocol details under their own names."""
        out: dict[str, Any] = {}
        if self.ended_at is not None:
            out["time"] = _iso(self.ended_at, "milliseconds")
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None or name in _ALWAYS:
                out[name] = value
        if self.started_at is not None:
            out["started"] = _iso(self.started_at, "microseconds")
        out.update(self.details)
        return out


_FIELDS = tuple(f.name for f in fields(RequestRecord) if f.name not in ("details", "started_at", "ended_at"))


class Recorded(TypedDict, total=False):
    """One record as `GET /_lab/requests` returns it (and the console and reliability tools read it): the
    recorder's fields, then a `RequestRecord`'s (`as_dict`), then its details under their own names."""

    seq: int  # per process, never reset: a reader polls with ?after=<the last seq it saw>
    time: str  # ISO time the reply ended
    service: str
    method: str
    url: str  # as the client addressed it (scheme, Host, raw path, query)
    path: str
    status: int
    request_bytes: int
    response_bytes: int
    elapsed_ms: float
    client_cert_subject: str | None
    client_cert_thumbprint: str | None
    tls_resumed: bool  # the connection's TLS session was resumed (an abbreviated handshake); absent: plain HTTP
    traceparent: str | None  # as received
    user_agent: str | None
    trace_id: str  # the server span (cmglab.wire.tracing.ServerSpan.record_fields)
    span_id: str
    parent_span_id: str | None
    tracestate: str | None
    reason: str  # an error reply's reason, read from its JSON body
    started: str
    fault: int
    auth_kind: str
    auth_subject: str
    via: str
    result: str
    refused: str
    error: str
    forwarded_url: str
    rewritten_url: str
    connection_point: str
    message_id: str  # connection point: the channel message it forwarded
    cmg: str  # connection point: the CMG instance the message came from
