"""The CMG channel: what the connection point and the CMG say to each other (docs/protocol-notes.md, Lab §3).

Transport: one WebSocket per (connection point, CMG instance), opened by the connection point to
the CMG's connector listener (`wss://<cmg>:<connector port>/CloudProxyChannel/v1`) with TLS client
authentication on both sides. Every WebSocket message is one binary frame:

    byte 0        frame type (`Kind`)
    bytes 1..16   message ID (UUID, 16 bytes; all zero for channel frames)
    bytes 17..    payload: UTF-8 JSON for control frames, raw bytes for *_BODY frames

Channel frames: HELLO (point -> CMG, JSON `Hello`), WELCOME (CMG -> point, JSON `{"channel": id}`),
CONFIG (point -> CMG, the site's published `/CCM_Cloud/config`), PING (point -> CMG) and PONG
(CMG -> point), the heartbeat. Message frames, keyed by message ID, many in flight at once:
REQUEST (CMG -> point, JSON `RequestHead`), REQUEST_BODY*, REQUEST_END, then RESPONSE (point -> CMG,
JSON `ResponseHead`), RESPONSE_BODY*, RESPONSE_END; ABORT (either way, JSON `{"status", "reason"}`)
ends a message early: before RESPONSE the CMG answers `status`, after it the client connection is cut.

Channel version 2 (HELLO's and WELCOME's `version`; each side uses it only when the other said 2): a message
whose head and whole body fit one frame may travel as one REQUEST_WHOLE / RESPONSE_WHOLE frame instead of
head, body and end, with the same meaning. Its payload: the head's JSON length (4 bytes, big-endian), the
head's JSON, then the body. One WebSocket message instead of three each way: the usual CcmMessaging request
and reply are a few KB.

This module is the only one that knows the byte layout, so another transport can replace it.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

PATH = "/CloudProxyChannel/v1"
CHUNK = 64 * 1024  # body bytes per frame
MAX_FRAME = CHUNK + 64 * 1024  # largest frame either end accepts (a JSON head with big headers)
ZERO_ID = uuid.UUID(int=0)
VERSION = 2  # this end's channel version: 2 adds the *_WHOLE frames
WHOLE = 2  # the version from which a peer reads *_WHOLE frames
_HEAD_LENGTH = 4  # bytes of a *_WHOLE frame's head length


class Kind(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    CONFIG = 3
    PING = 4
    PONG = 5
    REQUEST = 10
    REQUEST_BODY = 11
    REQUEST_END = 12
    REQUEST_WHOLE = 13  # REQUEST + REQUEST_BODY + REQUEST_END (version 2)
    RESPONSE = 20
    RESPONSE_BODY = 21
    RESPONSE_END = 22
    RESPONSE_WHOLE = 23  # RESPONSE + RESPONSE_BODY + RESPONSE_END (version 2)
    ABORT = 30


class FrameError(ValueError):
    pass


@dataclass(frozen=True)
class Frame:
    kind: Kind
    msg_id: uuid.UUID = ZERO_ID
    payload: bytes = b""

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.payload or b"{}")
        except ValueError as e:
            raise FrameError(f"{self.kind.name} frame: bad JSON: {e}") from e
        if not isinstance(value, dict):
            raise FrameError(f"{self.kind.name} frame: JSON object expected")
        return value


@contextmanager
def _malformed(kind: str) -> Iterator[None]:
    """A head with a missing field or a wrong type is the peer's protocol error, not ours."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as e:
        raise FrameError(f"{kind} frame: malformed head: {type(e).__name__}: {e}") from e


def encode(kind: Kind, msg_id: uuid.UUID = ZERO_ID, payload: bytes | dict[str, Any] = b"") -> bytes:
    if isinstance(payload, dict):
        payload = json.dumps(payload, separators=(",", ":")).encode()
    return bytes([kind]) + msg_id.bytes + payload


def encode_whole(kind: Kind, msg_id: uuid.UUID, head: dict[str, Any], body: bytes) -> bytes | None:
    """A head and its whole body in one frame, or None when they do not fit one (send them apart)."""
    head_json = json.dumps(head, separators=(",", ":")).encode()
    if 17 + _HEAD_LENGTH + len(head_json) + len(body) > MAX_FRAME:
        return None
    return b"".join((bytes([kind]), msg_id.bytes, len(head_json).to_bytes(_HEAD_LENGTH, "big"), head_json, body))


def split_whole(frame: Frame) -> tuple[dict[str, Any], bytes]:
    """A *_WHOLE frame's head (JSON object) and body."""
    payload = frame.payload
    size = int.from_bytes(payload[:_HEAD_LENGTH], "big")
    if len(payload) < _HEAD_LENGTH or _HEAD_LENGTH + size > len(payload):
        raise FrameError(f"{frame.kind.name} frame: head length {size} exceeds the frame")
    head = Frame(frame.kind, frame.msg_id, payload[_HEAD_LENGTH : _HEAD_LENGTH + size]).json()
    return head, payload[_HEAD_LENGTH + size :]


def decode(data: bytes) -> Frame:
    if len(data) < 17:
        raise FrameError(f"frame of {len(data)} bytes is shorter than its header")
    if len(data) > MAX_FRAME:
        raise FrameError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    try:
        kind = Kind(data[0])
    except ValueError as e:
        raise FrameError(f"unknown frame type {data[0]}") from e
    return Frame(kind, uuid.UUID(bytes=data[1:17]), data[17:])


def chunks(body: bytes) -> list[bytes]:
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]


@dataclass
class Hello:
    connection_point: str  # the point's name (its FQDN)
    instance: str  # one per process: tells two channels of the same point apart
    version: int = 1  # a point that says 2 reads REQUEST_WHOLE frames


@dataclass
class RequestHead:
    method: str
    url: str  # the external URL the client asked for: https://<cmg>/CCM_Proxy_.../<roleId>/<path>?<q>
    headers: list[tuple[str, str]]
    client_cert: str | None = None  # MutualAuth: the verified client certificate, base64 DER
    client: str | None = None  # the client's address as the CMG saw it
    auth_kind: str | None = None  # what the CMG checked: MutualAuth, CCMToken, EntraToken, ...
    content_length: int | None = None
    has_body: bool = False  # REQUEST_BODY frames follow (Content-Length > 0 or a chunked body)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "headers": self.headers,
            "client_cert": self.client_cert,
            "client": self.client,
            "auth_kind": self.auth_kind,
            "content_length": self.content_length,
            "has_body": self.has_body,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestHead:
        with _malformed("REQUEST"):
            return cls(
                method=str(data["method"]),
                url=str(data["url"]),
                headers=[(str(k), str(v)) for k, v in data.get("headers", [])],
                client_cert=data.get("client_cert"),
                client=data.get("client"),
                auth_kind=data.get("auth_kind"),
                content_length=data.get("content_length"),
                has_body=bool(data.get("has_body")),
            )


@dataclass
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    internal_url: str | None = None  # where the point sent it (for the CMG's records)
    connection_point: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "headers": self.headers,
            "internal_url": self.internal_url,
            "connection_point": self.connection_point,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResponseHead:
        with _malformed("RESPONSE"):
            return cls(
                status=int(data["status"]),
                reason=str(data.get("reason", "")),
                headers=[(str(k), str(v)) for k, v in data.get("headers", [])],
                internal_url=data.get("internal_url"),
                connection_point=data.get("connection_point"),
                extra=dict(data.get("extra") or {}),
            )


# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones a proxy sets itself: never forwarded either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
CLIENT_CERT_HEADER = "Client-Cert"  # RFC 9440, `:<base64 DER>:`


def end_to_end(headers: list[tuple[str, str]], *, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in drop]
