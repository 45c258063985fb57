"""The CMG's end of the connection point channels: the connected points, round-robin over them,
and the per-message streams that carry a request out and its reply back.

Transport-free: a point's channel is anything with `send_bytes` / `receive_bytes` / `close`
(the connector listener passes a Starlette WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cmglab.wire.cloud_config import CloudConfig
from cmglab.wire.cmg_channel import (
    WHOLE,
    Frame,
    FrameError,
    Kind,
    RequestHead,
    ResponseHead,
    chunks,
    decode,
    encode,
    encode_whole,
    split_whole,
)


class Transport(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...
    async def receive_bytes(self) -> bytes: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class ChannelClosed(Exception):
    """The point's channel went away while a message was in flight."""


class Aborted(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


_REPLY_FRAMES = frozenset({Kind.RESPONSE, Kind.RESPONSE_BODY, Kind.RESPONSE_END, Kind.RESPONSE_WHOLE, Kind.ABORT})
_LAST_FRAMES = frozenset({Kind.RESPONSE_END, Kind.RESPONSE_WHOLE, Kind.ABORT})  # a message's last frame


class Stream:
    """One message in flight on a channel: frames the point sends back for it arrive here."""

    def __init__(self, channel: PointChannel, msg_id: uuid.UUID) -> None:
        self.channel, self.msg_id = channel, msg_id
        self.queue: asyncio.Queue[Frame | BaseException] = asyncio.Queue()
        self.done = False
        self.whole_body: bytes | None = None  # the reply's body, when it came in one RESPONSE_WHOLE frame

    def feed(self, item: Frame | BaseException) -> None:
        self.queue.put_nowait(item)

    async def send_head(self, head: RequestHead) -> None:
        await self.channel.send(encode(Kind.REQUEST, self.msg_id, head.to_json()))

    async def send_body(self, data: bytes) -> None:
        for piece in chunks(data):
            await self.channel.send(encode(Kind.REQUEST_BODY, self.msg_id, piece))

    async def send_end(self) -> None:
        await self.channel.send(encode(Kind.REQUEST_END, self.msg_id))

    async def send_whole(self, head: RequestHead, body: bytes) -> None:
        """Head, body and end: in one frame when the point reads them and they fit, else in three."""
        frame = (
            encode_whole(Kind.REQUEST_WHOLE, self.msg_id, head.to_json(), body)
            if self.channel.version >= WHOLE
            else None
        )
        if frame is not None:
            await self.channel.send(frame)
            return
        await self.send_head(head)
        await self.send_body(body)
        await self.send_end()

    async def _next(self, timeout: float) -> Frame:
        try:
            async with asyncio.timeout(timeout):  # no Task per wait, as wait_for makes
                item = await self.queue.get()
        except TimeoutError:
            raise Aborted(504, f"no reply from the connection point within {timeout:g} s") from None
        if isinstance(item, BaseException):
            raise item
        if item.kind == Kind.ABORT:
            info = item.json()
            raise Aborted(int(info.get("status", 502)), str(info.get("reason", "aborted by the connection point")))
        return item

    async def response(self, timeout: float) -> ResponseHead:
        while True:
            frame = await self._next(timeout)
            if frame.kind == Kind.RESPONSE:
                return ResponseHead.from_json(frame.json())
            if frame.kind == Kind.RESPONSE_WHOLE:
                head, self.whole_body = split_whole(frame)
                self.done = True
                return ResponseHead.from_json(head)

    async def body(self, timeout: float) -> AsyncIterator[bytes]:
        if self.whole_body is not None:
            if self.whole_body:
                yield self.whole_body
            return
        while True:
            frame = await self._next(timeout)
            if frame.kind == Kind.RESPONSE_END:
                self.done = True
                return
            if frame.kind == Kind.RESPONSE_BODY:
                yield frame.payload

    async def abort(self, status: int, reason: str) -> None:
        """Tell the point to stop working on this message (the client went away, a limit was hit)."""
        if self.done:
            return
        self.done = True
        with contextlib.suppress(Exception):
            await self.channel.send(encode(Kind.ABORT, self.msg_id, {"status": status, "reason": reason}))

    def close(self) -> None:
        self.channel.streams.pop(self.msg_id, None)


@dataclass
class PointChannel:
    """One connected connection point (one WebSocket)."""

    transport: Transport
    name: str
    subject: str
    thumbprint: str
    instance: str = ""
    version: int = 1  # the channel version both ends speak (cmglab/wire/cmg_channel.py)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    connected_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    last_seen: float = field(default_factory=time.monotonic)
    served: int = 0
    streams: dict[uuid.UUID, Stream] = field(default_factory=dict)
    closed: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def label(self) -> str:
        return f"{self.name}#{self.id}"

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ChannelClosed(f"connection point {self.label} is gone")
        async with self._lock:
            try:
                await self.transport.send_bytes(data)
            except Exception as e:
                raise ChannelClosed(f"connection point {self.label}: send failed: {e}") from e

    def open_stream(self) -> Stream:
        stream = Stream(self, uuid.uuid4())
        self.streams[stream.msg_id] = stream
        self.served += 1
        return stream

    def fail_all(self, reason: str) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.feed(ChannelClosed(reason))
        self.streams.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channel": self.id,
            "instance": self.instance,
            "subject": self.subject,
            "thumbprint": self.thumbprint,
            "connected_at": self.connected_at,
            "in_flight": len(self.streams),
            "served": self.served,
            "idle_s": round(time.monotonic() - self.last_seen, 1),
        }


class Hub:
    """Every connected point, the site's published configuration, and round-robin over the points."""

    def __init__(self, log: logging.Logger, heartbeat: float, instance: int = 0) -> None:
        self.log = log
        self.heartbeat = heartbeat
        self.instance = instance  # this CMG VM instance's number (several CMG processes: which one answered)
        self.points: list[PointChannel] = []
        self.config: CloudConfig | None = None
        self.config_from: str | None = None
        self._rr = itertools.count()

    def pick(self) -> PointChannel | None:
        live = [p for p in self.points if not p.closed]
        if not live:
            return None
        return live[next(self._rr) % len(live)]

    def add(self, point: PointChannel) -> None:
        self.points.append(point)
        self.log.info(
            f"Connection point {point.name} connected: channel {point.id}, instance {point.instance}, "
            f"certificate {point.subject} ({point.thumbprint}). Connected points: {len(self.points)}"
        )

    def remove(self, point: PointChannel, reason: str) -> None:
        in_flight = len(point.streams)
        point.fail_all(reason)
        if point in self.points:
            self.points.remove(point)
        self.log.warning(
            f"Connection point {point.name} disconnected: channel {point.id} ({reason}); "
            f"{in_flight} request(s) in flight failed. Connected points: {len(self.points)}"
        )

    def set_config(self, point: PointChannel, config: CloudConfig) -> None:
        if config != self.config:
            endpoints = ", ".join(sorted(config.endpoints)) or "none"
            self.log.info(
                f"Received site configuration from {point.label}: site {config.site_code}, "
                f"published endpoints: {endpoints}, tenants: {len(config.tenants)}, "
                f"content: {'enabled' if config.content.enabled else 'disabled'}"
            )
        self.config, self.config_from = config, point.label

    async def serve(self, point: PointChannel) -> None:
        """Read the point's frames until its channel closes or goes silent."""
        self.add(point)
        reason = "channel closed"
        limit = self.heartbeat * 3
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(None) as silent:
                    # one loop timer per quiet spell, not one per frame (a frame per request): when it fires, a
                    # point heard from since is given its full limit again from its last frame
                    def check() -> None:
                        left = point.last_seen + limit - time.monotonic()
                        if left > 0:
                            timer[0] = loop.call_later(left, check)
                        else:
                            silent.reschedule(loop.time())  # now: the wait for a frame ends in TimeoutError

                    timer = [loop.call_later(limit, check)]
                    try:
                        while True:
                            data = await point.transport.receive_bytes()
                            point.last_seen = time.monotonic()
                            try:
                                frame = decode(data)
                            except FrameError as e:
                                reason = f"protocol error: {e}"
                                with contextlib.suppress(Exception):
                                    await point.transport.close(1002, reason[:120])
                                return
                            await self._dispatch(point, frame)
                    finally:
                        timer[0].cancel()
            except TimeoutError:
                if not silent.expired():
                    raise
                reason = f"no heartbeat for {limit:g} s"
                with contextlib.suppress(Exception):
                    await point.transport.close(1011, reason)
                return
        except ChannelClosed as e:
            reason = str(e)
        except Exception as e:  # the WebSocket went away (WebSocketDisconnect, connection reset)
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        finally:
            self.remove(point, reason)

    async def _dispatch(self, point: PointChannel, frame: Frame) -> None:
        if frame.kind == Kind.PING:
            await point.send(encode(Kind.PONG, payload=frame.payload))
        elif frame.kind == Kind.CONFIG:
            try:
                config = CloudConfig.model_validate(frame.json())
            except ValueError as e:  # the point sent what is not the site's configuration: keep the last one
                self.log.warning(f"Ignored a site configuration from {point.label} that does not parse: {e}")
            else:
                self.set_config(point, config)
        elif frame.kind in _REPLY_FRAMES:
            stream = point.streams.get(frame.msg_id)
            if stream is not None:
                stream.feed(frame)
                if frame.kind in _LAST_FRAMES:
                    point.streams.pop(frame.msg_id, None)
        else:
            self.log.warning(f"Ignored unexpected {frame.kind.name} frame from {point.label}")

    def snapshot(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "connection_points": [p.snapshot() for p in self.points],
            "site_config": self.config is not None,
            "site_config_from": self.config_from,
        }
