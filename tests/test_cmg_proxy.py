"""The CMG proxy and the connection point's forwarder at the channel's frames, in-process: a fake point (or a
fake MP) on the other side records every frame. Version interop of channel v2 (a v1 point with this CMG, this
point with a CMG that says 1), the one-frame fallback at MAX_FRAME, and no body pump left behind a request.
The same paths over real sockets and TLS: test_cmg_channel.py."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cmglab.runtime.admin import LabState
from cmglab.services.cmg.channel import Hub, PointChannel
from cmglab.services.cmg.errors import CMGError
from cmglab.services.cmg.proxy import Proxy
from cmglab.services.cmg_connection_point.forwarder import Forwarder
from cmglab.services.cmg_connection_point.upstream import Upstream
from cmglab.wire.cloud_config import CloudConfig
from cmglab.wire.cmg_channel import (
    CHUNK,
    MAX_FRAME,
    Frame,
    Kind,
    RequestHead,
    ResponseHead,
    decode,
    encode,
    encode_whole,
)
from cmglab.wire.cmg_urls import ProxyTarget
from cmglab.wire.kinds import AuthKind
from cmglab.wire.requests import RequestRecord

CMG = "cmg.corp.lab.test"
LOG = logging.getLogger("test_cmg_proxy")
Answer = Callable[[Frame, PointChannel], list[bytes]]  # the fake point's frames in answer to one it got


class FakePoint:
    """The point's end of a channel: records what the CMG sends and answers through `answer`."""

    def __init__(self, answer: Answer) -> None:
        self.frames: list[Frame] = []
        self.answer = answer
        self.channel: PointChannel | None = None

    async def send_bytes(self, data: bytes) -> None:
        frame = decode(data)
        self.frames.append(frame)
        assert self.channel is not None
        for reply in self.answer(frame, self.channel):
            stream = self.channel.streams.get(frame.msg_id)
            if stream is not None:
                stream.feed(decode(reply))

    async def receive_bytes(self) -> bytes:
        raise AssertionError("not read in these tests")

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        return None

    def kinds(self) -> list[Kind]:
        return [f.kind for f in self.frames]


def _proxy(answer: Answer, version: int) -> tuple[Proxy, FakePoint]:
    point = FakePoint(answer)
    channel = PointChannel(point, "cmgcp.corp.lab.test", "CN=cmgcp", "00", version=version)
    point.channel = channel
    hub = Hub(LOG, heartbeat=30)
    hub.points.append(channel)
    return Proxy(hub, LOG, name=CMG, max_body=4 * 1024 * 1024, timeout=2), point


def _request(body: asyncio.Queue[bytes | None], length: int) -> Request:
    """A client request whose body arrives as the test puts it in `body` (None: the client is done)."""

    async def receive() -> dict[str, Any]:
        chunk = await body.get()
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/CCM_Proxy_ServerAuth/72057594037927939/echo",
        "raw_path": b"/CCM_Proxy_ServerAuth/72057594037927939/echo",
        "query_string": b"",
        "headers": [(b"host", CMG.encode()), (b"content-length", str(length).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 443),
        "scheme": "https",
        "http_version": "1.1",
    }
    return Request(scope, receive)


async def _forward(proxy: Proxy, request: Request) -> Response:
    target = ProxyTarget("ServerAuth", "72057594037927939", ("echo",))
    return await proxy.forward(request, target, auth_kind=AuthKind.CMG_CCM_TOKEN, client_cert=None, rec=RequestRecord())


def _whole_reply(msg_id: uuid.UUID, status: int, body: bytes) -> bytes:
    head = ResponseHead(status, "", [("Content-Length", str(len(body)))]).to_json()
    return encode_whole(Kind.RESPONSE_WHOLE, msg_id, head, body) or b""


async def _body_of(response: Response) -> bytes:
    if isinstance(response, StreamingResponse):
        return b"".join([bytes(c) async for c in response.body_iterator])  # type: ignore[arg-type]
    return bytes(response.body)


def _others() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def _settled(deadline: float = 2.0) -> set[asyncio.Task[Any]]:
    """The tasks still pending once the loop had every chance to finish them (polled, not slept)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while _others() and loop.time() < end:
        await asyncio.sleep(0.01)
    return _others()


@pytest.mark.parametrize("ending", ["early 4xx", "abort", "channel closed"])
def test_a_streamed_request_ended_early_leaves_no_body_pump(ending: str) -> None:
    """Issue 20 review (3): a >64 KiB upload answered before its end (a one-frame 413, an ABORT, the channel
    gone): nothing keeps reading the client's body or sending REQUEST_BODY frames for the finished message."""

    def answer(frame: Frame, channel: PointChannel) -> list[bytes]:
        if frame.kind != Kind.REQUEST_BODY or sum(f.kind == Kind.REQUEST_BODY for f in point.frames) != 1:
            return []
        if ending == "early 4xx":
            return [_whole_reply(frame.msg_id, 413, b"too big")]
        if ending == "abort":
            return [encode(Kind.ABORT, frame.msg_id, {"status": 413, "reason": "the MP refused the body"})]
        channel.fail_all("the point went away")
        return []

    proxy, point = _proxy(answer, version=2)

    async def run() -> None:
        body: asyncio.Queue[bytes | None] = asyncio.Queue()
        for _ in range(3):
            body.put_nowait(b"x" * 16_384)  # the first part of a 100 KiB upload; the rest is never sent
        request = _request(body, 100 * 1024)
        if ending == "early 4xx":
            response = await _forward(proxy, request)
            assert response.status_code == 413 and await _body_of(response) == b"too big"
        else:
            with pytest.raises(CMGError) as refused:
                await _forward(proxy, request)
            assert refused.value.status == (413 if ending == "abort" else 502)
        assert await _settled() == set()  # no pump task left pending
        sent = len(point.frames)
        for _ in range(4):
            body.put_nowait(b"y" * 16_384)  # the client goes on uploading: nobody reads or forwards it
        body.put_nowait(None)
        assert await _settled() == set()
        assert point.kinds()[sent:] == [] and body.qsize() >= 5  # none of the later parts read
        assert Kind.REQUEST_END not in point.kinds()

    asyncio.run(run())


def test_a_v1_point_gets_three_frames_from_the_v2_cmg() -> None:
    """A point that said version 1 never sees a *_WHOLE frame; its three-frame reply is streamed back."""
    replies: list[bytes] = []

    def answer(frame: Frame, channel: PointChannel) -> list[bytes]:
        if frame.kind != Kind.REQUEST_END:
            return []
        head = ResponseHead(200, "OK", [("Content-Length", "5")]).to_json()
        replies[:] = [
            encode(Kind.RESPONSE, frame.msg_id, head),
            encode(Kind.RESPONSE_BODY, frame.msg_id, b"hello"),
            encode(Kind.RESPONSE_END, frame.msg_id),
        ]
        return replies

    proxy, point = _proxy(answer, version=1)

    async def run() -> None:
        body: asyncio.Queue[bytes | None] = asyncio.Queue()
        body.put_nowait(b"ping" * 100)
        body.put_nowait(None)
        response = await _forward(proxy, _request(body, 400))
        assert response.status_code == 200 and await _body_of(response) == b"hello"
        assert point.kinds() == [Kind.REQUEST, Kind.REQUEST_BODY, Kind.REQUEST_END]
        assert RequestHead.from_json(point.frames[0].json()).url.startswith(f"https://{CMG}/CCM_Proxy_ServerAuth/")
        assert point.frames[1].payload == b"ping" * 100
        assert await _settled() == set()

    asyncio.run(run())


def test_a_v2_point_gets_one_frame_from_the_v2_cmg() -> None:
    def answer(frame: Frame, channel: PointChannel) -> list[bytes]:
        return [_whole_reply(frame.msg_id, 200, b"hello")] if frame.kind == Kind.REQUEST_WHOLE else []

    proxy, point = _proxy(answer, version=2)

    async def run() -> None:
        body: asyncio.Queue[bytes | None] = asyncio.Queue()
        body.put_nowait(b"ping" * 100)
        body.put_nowait(None)
        response = await _forward(proxy, _request(body, 400))
        assert response.status_code == 200 and await _body_of(response) == b"hello"
        assert point.kinds() == [Kind.REQUEST_WHOLE]

    asyncio.run(run())


class FakeReply:
    """The MP's reply as the forwarder reads it (upstream.Reply's shape)."""

    def __init__(self, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.status_code, self.reason_phrase = 200, "OK"
        self.headers = [("Content-Length", str(len(body))), *headers]
        self.content_length = len(body)
        self._body = body
        self._read = False

    async def body(self) -> AsyncIterator[bytes]:
        if not self._read:
            self._read = True
            yield self._body[: len(self._body) // 2]
            yield self._body[len(self._body) // 2 :]

    async def read(self) -> bytes:
        self._read = True
        return self._body

    async def aclose(self) -> None:
        return None


class FakeMP:
    def __init__(self, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.reply = FakeReply(body, headers)
        self.got: list[bytes | None] = []

    async def request(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | AsyncIterator[bytes] | None
    ) -> FakeReply:
        self.got.append(body if isinstance(body, bytes) or body is None else b"".join([c async for c in body]))
        return self.reply


def _forwarded(
    reply_body: bytes, *, whole_replies: bool, pad: int = 0, request: bytes | asyncio.Queue[Any] = b"ping"
) -> tuple[list[Frame], FakeMP]:
    """The frames the point sends back for one request, the MP answering `reply_body` (and an X-Pad header
    of `pad` bytes)."""
    mp = FakeMP(reply_body, [("X-Pad", "x" * pad)] if pad else [])
    forwarder = Forwarder(
        cast(Upstream, mp),
        LOG,
        LabState("cmg-connection-point", 10),
        name="cmgcp.corp.lab.test",
        cmg_name=CMG,
        max_body=4 * 1024 * 1024,
        timeout=3,
    )
    config = CloudConfig.model_validate(
        {
            "site_code": "LAB",
            "endpoints": {"72057594037927939": {"internal_url": "https://mp.corp.lab.test", "paths": ["echo"]}},
        }
    )
    head = RequestHead("POST", f"https://{CMG}/CCM_Proxy_ServerAuth/72057594037927939/echo", [], has_body=True)
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    asyncio.run(forwarder.handle(uuid.uuid4(), head, request, send, config, "cmg#1", whole_replies=whole_replies))
    return [decode(data) for data in sent], mp  # decode: each frame is one the CMG accepts (<= MAX_FRAME)


def test_the_point_answers_a_cmg_that_says_1_in_three_frames() -> None:
    """A CMG that said version 1 (WELCOME's version, the dialer's whole_replies) never gets RESPONSE_WHOLE; the
    point reads its three-frame request as before."""

    three_frames: asyncio.Queue[Any] = asyncio.Queue()  # REQUEST_BODY, REQUEST_BODY, REQUEST_END
    for item in (b"pi", b"ng", None):
        three_frames.put_nowait(item)
    frames, mp = _forwarded(b"pong", whole_replies=False, request=three_frames)
    assert [f.kind for f in frames] == [Kind.RESPONSE, Kind.RESPONSE_BODY, Kind.RESPONSE_BODY, Kind.RESPONSE_END]
    assert b"".join(f.payload for f in frames if f.kind == Kind.RESPONSE_BODY) == b"pong"
    assert ResponseHead.from_json(frames[0].json()).status == 200
    assert mp.got == [b"ping"]
    frames, _ = _forwarded(b"pong", whole_replies=True)
    assert [f.kind for f in frames] == [Kind.RESPONSE_WHOLE]


def test_a_reply_just_over_max_frame_takes_three_frames() -> None:
    """A reply of Content-Length <= 64 KiB whose head and body together are MAX_FRAME goes in one frame; one
    byte more and it goes as RESPONSE, RESPONSE_BODY, RESPONSE_END, byte-identical."""
    body = bytes(range(256)) * (CHUNK // 256)
    (probe,), _ = _forwarded(body, whole_replies=True, pad=1)
    pad = 1 + MAX_FRAME - (17 + len(probe.payload))  # the X-Pad length that makes the frame exactly MAX_FRAME
    (exact,), _ = _forwarded(body, whole_replies=True, pad=pad)
    assert exact.kind == Kind.RESPONSE_WHOLE and 17 + len(exact.payload) == MAX_FRAME
    frames, _ = _forwarded(body, whole_replies=True, pad=pad + 1)
    assert [f.kind for f in frames] == [Kind.RESPONSE, Kind.RESPONSE_BODY, Kind.RESPONSE_END]
    assert frames[1].payload == body
    assert dict(ResponseHead.from_json(frames[0].json()).headers)["X-Pad"] == "x" * (pad + 1)
