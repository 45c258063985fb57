"""The connection point's channels: one per configured CMG instance, dialled out (the point listens
for nothing), kept up with heartbeats, re-dialled with exponential backoff and jitter.

On connect and on every heartbeat the point fetches the site's published configuration
(`GET <mp>/CCM_Cloud/config`, mutual TLS) and sends it to the CMG; requests the CMG sends are handed
to the forwarder, many at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from cmglab.services.cmg_connection_point.forwarder import BodyItem, Forwarder
from cmglab.wire.cloud_config import CloudConfig
from cmglab.wire.cmg_channel import (
    MAX_FRAME,
    VERSION,
    WHOLE,
    FrameError,
    Kind,
    RequestHead,
    decode,
    encode,
    split_whole,
)

OPEN_TIMEOUT = 10.0
BACKOFF_START = 0.5


def backoff_delay(attempt: int, maximum: float, rand: random.Random | None = None) -> float:
    """Exponential backoff with 'equal jitter': half the step fixed, half random, capped at `maximum`."""
    step = min(maximum, BACKOFF_START * (2 ** max(0, attempt - 1)))
    return step / 2 + (rand or random).uniform(0, step / 2)


class SiteConfig:
    """The site's published CMG configuration, fetched from the MP and shared by every channel."""

    def __init__(self, client: httpx.AsyncClient, url: str, log: logging.Logger, max_age: float) -> None:
        self.client, self.url, self.log, self.max_age = client, url, log, max_age
        self.value: CloudConfig | None = None
        self.fetched_at = 0.0
        self.error: str | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> CloudConfig | None:
        async with self._lock:
            if self.value is not None and time.monotonic() - self.fetched_at < self.max_age:
                return self.value
            self.fetched_at = time.monotonic()
            try:
                reply = await self.client.get(self.url)
                reply.raise_for_status()
                value = CloudConfig.model_validate_json(reply.content)
            except (httpx.HTTPError, ValueError) as e:  # pydantic's ValidationError is a ValueError
                error = f"{type(e).__name__}: {e}"
                if error != self.error:
                    self.log.warning(
                        f"Failed to get the CMG configuration from {self.url}: {error}. Keeping the last one."
                        if self.value
                        else f"Failed to get the CMG configuration from {self.url}: {error}."
                    )
                self.error = error
                return self.value
            if value != self.value:
                endpoints = ", ".join(f"{rid} -> {e.internal_url}" for rid, e in value.endpoints.items()) or "none"
                self.log.info(
                    f"Got the CMG configuration from {self.url}: site {value.site_code}, endpoints: {endpoints}"
                )
            self.value, self.error = value, None
            return value


class Channel:
    """One CMG instance: dial, serve, re-dial forever."""

    def __init__(
        self,
        url: str,
        *,
        ssl_ctx: ssl.SSLContext,
        address: tuple[str, int] | None,
        name: str,
        instance: str,
        site: SiteConfig,
        forwarder: Forwarder,
        log: logging.Logger,
        heartbeat: float,
        backoff_max: float,
    ) -> None:
        self.url, self.ssl_ctx, self.address = url, ssl_ctx, address
        self.name, self.instance, self.site, self.forwarder, self.log = name, instance, site, forwarder, log
        self.heartbeat, self.backoff_max = heartbeat, backoff_max
        self.state = "starting"
        self.channel_id: str | None = None
        self.connected_since: str | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.attempt = 0
        self.last_heard = time.monotonic()
        self.inflight: dict[uuid.UUID, tuple[asyncio.Task[None], asyncio.Queue[BodyItem] | None]] = {}
        self._ws: ClientConnection | None = None
        self.whole_replies = False
        self._send_lock = asyncio.Lock()

    @property
    def label(self) -> str:
        return urlsplit(self.url).netloc

    def snapshot(self) -> dict[str, Any]:
        return {
            "cmg": self.url,
            "state": self.state,
            "channel": self.channel_id,
            "connected_since": self.connected_since,
            "connects": self.connects,
            "last_error": self.last_error,
            "in_flight": len(self.inflight),
        }

    async def run(self) -> None:
        while True:
            self.state = "connecting"
            try:
                await self._session()
                self.last_error = "channel closed"
            except asyncio.CancelledError:
                raise
            except InvalidStatus as e:
                self.last_error = f"the CMG refused the channel: HTTP {e.response.status_code}"
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            finally:
                await self._drop_inflight()
                self._ws, self.channel_id, self.connected_since = None, None, None
            self.attempt += 1
            delay = backoff_delay(self.attempt, self.backoff_max)
            self.state = "waiting"
            self.log.warning(
                f"Channel to CMG {self.label} is down: {self.last_error}. "
                f"Reconnecting in {delay:.1f} s (attempt {self.attempt})."
            )
            await asyncio.sleep(delay)

    async def _drop_inflight(self) -> None:
        tasks = [task for task, _ in self.inflight.values()]
        self.inflight.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def send(self, data: bytes) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionError("channel is down")
        async with self._send_lock:
            await ws.send(data)

    async def _session(self) -> None:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        kwargs: dict[str, Any] = {}
        if self.address is not None:  # the lab's name mapping: connect there, verify and SNI the real name
            kwargs.update(host=self.address[0], port=self.address[1], server_hostname=host)
        async with connect(
            self.url,
            ssl=self.ssl_ctx,
            proxy=None,
            open_timeout=OPEN_TIMEOUT,
            ping_interval=None,
            max_size=MAX_FRAME,
            compression=None,
            close_timeout=2,
            **kwargs,
        ) as ws:
            await ws.send(
                encode(
                    Kind.HELLO, payload={"connection_point": self.name, "instance": self.instance, "version": VERSION}
                )
            )
            welcome = decode(await asyncio.wait_for(ws.recv(decode=False), OPEN_TIMEOUT))
            if welcome.kind != Kind.WELCOME:
                raise FrameError(f"expected WELCOME, got {welcome.kind.name}")
            self._ws = ws
            info = welcome.json()
            self.channel_id = str(info.get("channel"))
            self.whole_replies = int(info.get("version") or 1) >= WHOLE  # the CMG reads RESPONSE_WHOLE
            self.connected_since = datetime.now(UTC).isoformat(timespec="seconds")
            self.connects += 1
            self.attempt = 0
            self.last_error = None
            self.last_heard = time.monotonic()
            self.state = "connected"
            self.log.info(f"Connected to CMG {self.label} (channel {self.channel_id}, connection {self.connects}).")
            await self._send_config()
            reader = asyncio.create_task(self._reader(ws))
            beat = asyncio.create_task(self._heartbeat())
            try:
                done, _ = await asyncio.wait({reader, beat}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raise what ended it
            finally:
                for task in (reader, beat):
                    task.cancel()
                for task in (reader, beat):
                    with contextlib.suppress(BaseException):
                        await task

    async def _send_config(self) -> None:
        config = await self.site.get()
        if config is not None:
            await self.send(encode(Kind.CONFIG, payload=config.model_dump()))

    async def _heartbeat(self) -> None:
        while True:
            # until the site's configuration arrives (the MP may start after the point), ask every second
            await asyncio.sleep(self.heartbeat if self.site.value is not None else min(1.0, self.heartbeat))
            if time.monotonic() - self.last_heard > self.heartbeat * 3:
                raise TimeoutError(f"no answer from the CMG for {self.heartbeat * 3:g} s")
            await self._send_config()
            await self.send(encode(Kind.PING, payload={"t": time.time()}))

    def _finished(self, msg_id: uuid.UUID) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self.inflight.pop(msg_id, None)

        return done

    async def _reader(self, ws: ClientConnection) -> None:
        async for data in ws:
            if isinstance(data, str):
                raise FrameError("text frame on the channel")
            self.last_heard = time.monotonic()
            frame = decode(data)
            if frame.kind in (Kind.REQUEST, Kind.REQUEST_WHOLE):
                queue: asyncio.Queue[BodyItem] | None = None  # none for a whole request: no frames follow
                body: asyncio.Queue[BodyItem] | bytes
                if frame.kind == Kind.REQUEST_WHOLE:
                    head_json, body = split_whole(frame)
                    head = RequestHead.from_json(head_json)
                else:
                    head = RequestHead.from_json(frame.json())
                    body = queue = asyncio.Queue()
                task = asyncio.create_task(
                    self.forwarder.handle(
                        frame.msg_id,
                        head,
                        body,
                        self.send,
                        self.site.value,
                        self.label,
                        whole_replies=self.whole_replies,
                    )
                )
                self.inflight[frame.msg_id] = (task, queue)
                task.add_done_callback(self._finished(frame.msg_id))
            elif frame.kind in (Kind.REQUEST_BODY, Kind.REQUEST_END, Kind.ABORT):
                entry = self.inflight.get(frame.msg_id)
                if entry is None:
                    continue
                task, body_queue = entry
                if frame.kind == Kind.ABORT:
                    task.cancel()
                elif body_queue is None:  # body frames for a whole request: the CMG breaks the protocol
                    continue
                elif frame.kind == Kind.REQUEST_BODY:
                    body_queue.put_nowait(frame.payload)
                else:
                    body_queue.put_nowait(None)
            elif frame.kind == Kind.PONG:
                pass
            else:
                self.log.warning(f"Ignored unexpected {frame.kind.name} frame from CMG {self.label}")
