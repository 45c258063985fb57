"""The connection point's HTTP/1.1 client for the MP (cmglab/services/cmg_connection_point/upstream.py) against a
fake MP over a real TLS socket that answers with bytes of the test's choosing: good replies reuse the connection;
a malformed, oversized, unframed, trickled or silent reply is an UpstreamError (502) or UpstreamTimeout (504)
without hanging, and the pool never hands out a connection that is not at a message boundary (the next request
gets its own reply, on a new connection). The forwarder turns them into the channel's ABORT frame."""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from cmglab.pki.builders import cert_pem, key_pem, leaf, name, new_key, self_signed_ca
from cmglab.runtime.admin import LabState
from cmglab.services.cmg_connection_point.forwarder import Forwarder
from cmglab.services.cmg_connection_point.upstream import MAX_HEAD, Upstream, UpstreamError, UpstreamTimeout
from cmglab.wire.cloud_config import CloudConfig
from cmglab.wire.cmg_channel import CHUNK, Kind, RequestHead, ResponseHead, decode, split_whole

HOST = "mp.upstream.test"
TIMEOUT = 2.0
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """On uvloop, as the connection point runs (its TLS transport pauses and resumes reading)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(coro)
        return
    uvloop.run(coro)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the fake MP's server context, the point's client context trusting it)."""
    d: Path = tmp_path_factory.mktemp("upstream-pki")
    ca_key, key = new_key(), new_key()
    ca = self_signed_ca(ca_key, name("Upstream Test CA"))
    cert = leaf(key.public_key(), name(HOST), ca, ca_key, ekus=[ExtendedKeyUsageOID.SERVER_AUTH], san=[HOST])
    (d / "ca.pem").write_bytes(cert_pem(ca))
    (d / "mp.pem").write_bytes(cert_pem(cert) + cert_pem(ca))
    (d / "mp.key").write_bytes(key_pem(key))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "mp.pem", d / "mp.key")
    client = ssl.create_default_context(cafile=str(d / "ca.pem"))
    return server, client


Script = Callable[[asyncio.StreamWriter], Awaitable[bool]]  # writes a reply; True: keep the connection open


def reply(data: bytes, *, close: bool = False) -> Script:
    async def write(w: asyncio.StreamWriter) -> bool:
        w.write(data)
        await w.drain()
        return not close

    return write


@dataclass
class FakeMP:
    """Answers each request by its path's script; records (connection number, request line, body)."""

    scripts: dict[str, Script]
    seen: list[tuple[int, str, bytes]] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
                body = b""
                if "content-length" in fields:
                    body = await r.readexactly(int(fields["content-length"]))
                elif fields.get("transfer-encoding") == "chunked":
                    while size := int((await r.readuntil(b"\r\n"))[:-2], 16):
                        body += (await r.readexactly(size + 2))[:-2]
                    await r.readuntil(b"\r\n")
                self.seen.append((number, lines[0], body))
                if not await self.scripts[lines[0].split(" ")[1]](w):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()


async def _with_mp(
    ctxs: tuple[ssl.SSLContext, ssl.SSLContext],
    scripts: dict[str, Script],
    body: Callable[[Upstream, FakeMP], Awaitable[None]],
    timeout: float = TIMEOUT,
) -> FakeMP:
    mp = FakeMP(scripts)
    server = await asyncio.start_server(mp.serve, "127.0.0.1", 0, ssl=ctxs[0])
    mp.port = server.sockets[0].getsockname()[1]
    upstream = Upstream(ctxs[1], {(HOST, mp.port): "127.0.0.1"}, timeout=timeout)
    try:
        async with asyncio.timeout(30):  # nothing here may hang
            await body(upstream, mp)
    finally:
        await upstream.aclose()
        server.close()
    return mp


def url(mp: FakeMP, path: str) -> str:
    return f"https://{HOST}:{mp.port}{path}"


async def fetch(upstream: Upstream, mp: FakeMP, path: str, method: str = "GET", body: bytes | None = None) -> bytes:
    headers = [("Content-Length", str(len(body)))] if body is not None else []
    response = await upstream.request(method, url(mp, path), headers, body)
    try:
        return b"".join([chunk async for chunk in response.body()])
    finally:
        await response.aclose()


def test_good_replies_reuse_one_connection(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\nX-T: 1\r\n\r\n"
    scripts = {
        "/ok": reply(OK),
        "/chunked": reply(chunked),
        "/head": reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        "/continue": reply(b"HTTP/1.1 100 Continue\r\n\r\n" + OK),
        "/empty": reply(b"HTTP/1.1 204 No Content\r\n\r\n"),
    }

    async def body(upstream: Upstream, mp: FakeMP) -> None:
        assert await fetch(upstream, mp, "/ok", "POST", b"ping") == b"hello"
        assert await fetch(upstream, mp, "/chunked") == b"hello"
        assert await fetch(upstream, mp, "/head", "HEAD") == b""
        assert await fetch(upstream, mp, "/continue") == b"hello"
        assert await fetch(upstream, mp, "/empty") == b""
        response = await upstream.request("POST", url(mp, "/ok"), [("X-A", "1")], _pieces(b"ab", b"", b"cd"))
        assert response.status_code == 200 and response.content_length == 5
        assert ("Content-Type", "text/plain") in response.headers
        assert await response.read() == b"hello"
        await response.aclose()

    mp = _run_mp(tls, scripts, body)
    assert mp.connections == 1
    assert [s[2] for s in mp.seen] == [b"ping", b"", b"", b"", b"", b"abcd"]  # the last one chunked


async def _pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _run_mp(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
    scripts: dict[str, Script],
    body: Callable[[Upstream, FakeMP], Awaitable[None]],
    timeout: float = TIMEOUT,
) -> FakeMP:
    result: list[FakeMP] = []

    async def main() -> None:
        result.append(await _with_mp(tls, {**scripts, "/next": reply(OK)}, body, timeout))

    _run(main())
    return result[0]


BAD_REPLIES = {
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nhello",
    "cl-twice": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-twice-same": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl-sign": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "cl-hex": b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
    "cl-huge": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-overrun": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
    "bad-status": b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "header-nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "header-bare-cr": b"HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 0\r\n\r\n",
    "header-space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "informational-body": b"HTTP/1.1 199 Odd\r\nContent-Length: 3\r\n\r\nabc" + OK,
    "big-head": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * MAX_HEAD + b"\r\nContent-Length: 0\r\n\r\n",
    "many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-P: 0123456789\r\n" * 2000 + b"Content-Length: 0\r\n\r\n",
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello",
    "no-head": b"",
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_a_malformed_reply_is_an_error_and_the_pool_stays_in_step(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], case: str
) -> None:
    """Each bad reply (then the connection closed by the MP, as a real one might, or not) fails its request;
    the next request is answered with its own reply on a new connection."""
    for close in (True, False):
        scripts = {"/bad": reply(BAD_REPLIES[case], close=close)}

        async def body(upstream: Upstream, mp: FakeMP, close: bool = close) -> None:
            await fetch(upstream, mp, "/next")
            with pytest.raises(UpstreamError) as refused:
                await fetch(upstream, mp, "/bad")
            stalls = case in ("no-head", "short-body") and not close  # the MP says nothing more: a timeout
            assert isinstance(refused.value, UpstreamTimeout) == stalls
            assert await fetch(upstream, mp, "/next") == b"hello"

        mp = _run_mp(tls, scripts, body, timeout=1.0)
        assert mp.connections == 2, case  # the broken connection was never reused


def test_an_endless_head_is_cut_at_max_head(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """A head that never ends (one header line growing forever) is refused once it passes MAX_HEAD, not buffered
    until the timeout."""

    async def endless(w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        for _ in range(64):
            w.write(b"a" * 1024)
            await w.drain()
        await asyncio.sleep(30)
        return False

    async def body(upstream: Upstream, mp: FakeMP) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamError, match="exceeds"):
            await fetch(upstream, mp, "/endless")
        assert loop.time() - started < 20  # the 20-s upstream timeout never ran out: the size refused it

    _run_mp(tls, {"/endless": endless}, body, timeout=20)


def test_a_trickled_or_silent_head_times_out(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """The whole head must come within the timeout, however it trickles; a body that stalls times out per read."""

    async def trickle(w: asyncio.StreamWriter) -> bool:
        for byte in b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 200:
            w.write(bytes([byte]))
            await w.drain()
            await asyncio.sleep(0.05)
        return False

    async def stall(w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        await w.drain()
        await asyncio.sleep(30)
        return False

    async def body(upstream: Upstream, mp: FakeMP) -> None:
        with pytest.raises(UpstreamTimeout):
            await fetch(upstream, mp, "/trickle")
        with pytest.raises(UpstreamTimeout):
            await fetch(upstream, mp, "/stall")
        assert await fetch(upstream, mp, "/next") == b"hello"

    mp = _run_mp(tls, {"/trickle": trickle, "/stall": stall}, body, timeout=1.0)
    assert mp.connections == 3


def test_bytes_after_a_reply_or_between_requests_are_never_read_as_the_next_reply(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A second reply to one request, in the same write or later while the connection waits in the pool: the first
    reply stands, the connection is closed, and the next request gets its own reply (the smuggled one never)."""
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"

    async def late(w: asyncio.StreamWriter) -> bool:
        w.write(OK)
        await w.drain()
        await asyncio.sleep(0.3)
        w.write(smuggled)
        await w.drain()
        return True

    scripts = {
        "/two": reply(OK + smuggled),
        "/extra": reply(OK + b"X"),
        "/late": late,
    }

    async def body(upstream: Upstream, mp: FakeMP) -> None:
        for path in ("/two", "/extra"):
            assert await fetch(upstream, mp, path) == b"hello"
            assert await fetch(upstream, mp, "/next") == b"hello"
        assert await fetch(upstream, mp, "/late") == b"hello"
        deadline = asyncio.get_running_loop().time() + 10
        while all(conn.reusable() for conns in upstream.idle.values() for conn in conns):
            assert asyncio.get_running_loop().time() < deadline, "the late bytes never arrived"
            await asyncio.sleep(0.05)
        assert await fetch(upstream, mp, "/next") == b"hello"

    mp = _run_mp(tls, scripts, body)
    assert mp.connections == 4  # /two+/next, /extra+/next... each after-reply byte cost its connection


def test_a_chunked_replys_trailer_never_joins_its_head(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """llhttp reports a chunked reply's trailer fields through the same callback as its head's: they are read and
    dropped (as h11 did), never handed on as reply headers (a Set-Cookie or Location after the body, arriving in
    the head's read, once reached the client in the CMG's head), and an endless trailer is cut at MAX_HEAD."""
    trailed = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n5\r\nhello\r\n0\r\n"
        b"Set-Cookie: stolen=1\r\nLocation: https://evil.test/\r\n\r\n"
    )
    endless = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + b"X-T: abcdef\r\n" * 4096
    scripts = {"/trailed": reply(trailed), "/endless": reply(endless + b"\r\n")}

    async def body(upstream: Upstream, mp: FakeMP) -> None:
        response = await upstream.request("GET", url(mp, "/trailed"), [], None)
        assert await response.read() == b"hello"
        assert [k for k, _ in response.headers] == ["Transfer-Encoding", "X-Head"]
        await response.aclose()
        assert await fetch(upstream, mp, "/next") == b"hello"  # the trailed reply ended in step: reused
        with pytest.raises(UpstreamError, match="trailer exceeds"):
            await fetch(upstream, mp, "/endless")
        assert await fetch(upstream, mp, "/next") == b"hello"

    assert _run_mp(tls, scripts, body).connections == 2


def test_an_unframed_reply_ends_at_the_close_and_is_not_reused(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def body(upstream: Upstream, mp: FakeMP) -> None:
        assert await fetch(upstream, mp, "/eof") == b"until the end"
        assert await fetch(upstream, mp, "/next") == b"hello"

    scripts = {
        "/eof": reply(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True),
    }
    assert _run_mp(tls, scripts, body).connections == 2


def test_connection_close_and_http10_replies_are_not_reused(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    scripts = {
        "/close": reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"),
        "/http10": reply(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    }

    async def body(upstream: Upstream, mp: FakeMP) -> None:
        for path in ("/close", "/http10"):
            assert await fetch(upstream, mp, path) == b"hello"
        assert await fetch(upstream, mp, "/next") == b"hello"

    assert _run_mp(tls, scripts, body).connections == 3


def test_a_large_streamed_reply_is_read_in_full(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """A reply larger than what the reader buffers before it pauses, read slowly: every byte, in order, in pieces
    a channel frame carries."""
    big = bytes(range(256)) * 4096  # 1 MiB

    async def body(upstream: Upstream, mp: FakeMP) -> None:
        response = await upstream.request("GET", url(mp, "/big"), [], None)
        got = bytearray()
        async for chunk in response.body():
            assert len(chunk) <= CHUNK  # each piece fits one channel frame
            got += chunk
            await asyncio.sleep(0.001)
        await response.aclose()
        assert bytes(got) == big
        assert await fetch(upstream, mp, "/next") == b"hello"

    scripts = {"/big": reply(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)}
    assert _run_mp(tls, scripts, body).connections == 1


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Evil", "a\r\nContent-Length: 0")],
        [("X-Evil", "a\nb")],
        [("X-Evil\r\nX-Other", "a")],
        [("X Evil", "a")],
        [("X-Evil:", "a")],
        [("X-Evil", " leading")],
        [("X-Evil", "nul\x00")],
        [("X-Evil", "\u2603")],
        [("Content-Length", "4"), ("Content-Length", "4")],
        [("Content-Length", "-4")],
        [("Content-Length", "5")],
        [("Transfer-Encoding", "chunked")],
        [("Host", "elsewhere.test")],
    ],
)
def test_a_request_that_could_change_meaning_at_the_mp_is_never_sent(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], headers: list[tuple[str, str]]
) -> None:
    async def body(upstream: Upstream, mp: FakeMP) -> None:
        with pytest.raises(UpstreamError, match=r"refused|Content-Length"):
            response = await upstream.request("POST", url(mp, "/next"), headers, b"ping")
            await response.aclose()
        for method, target in (("GET /", "/next"), ("GET", "/next x"), ("GET", "/next\x00")):
            with pytest.raises(UpstreamError, match="refused"):
                await upstream.request(method, url(mp, target), [], None)

    assert _run_mp(tls, {}, body).seen == []


def _forwarder(upstream: Upstream, max_body: int) -> Forwarder:
    return Forwarder(
        upstream,
        logging.getLogger("test_cmg_upstream"),
        LabState("cmg-connection-point", 10),
        name="cmgcp.upstream.test",
        cmg_name="cmg.upstream.test",
        max_body=max_body,
        timeout=TIMEOUT,
    )


def test_the_forwarder_answers_bad_and_oversized_replies_with_502(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Through the forwarder: an over-long Content-Length and a chunked reply that grows past max_body end in an
    ABORT 502 (the CMG's error reply), a malformed one too; a good one after them is answered whole."""
    scripts = {
        "/declared": reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000),
        "/grows": reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"100\r\n" + b"b" * 256 + b"\r\n") * 8
        ),
        "/malformed": reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
    }
    frames: dict[str, list[Any]] = {}

    async def body(upstream: Upstream, mp: FakeMP) -> None:
        config = CloudConfig.model_validate(
            {
                "site_code": "LAB",
                "allow_cmg": True,
                "endpoints": {
                    "72057594037927939": {
                        "internal_url": url(mp, ""),
                        "paths": ["declared", "grows", "malformed", "next"],
                    }
                },
            }
        )
        forwarder = _forwarder(upstream, max_body=1024)
        for path in ("/declared", "/grows", "/malformed", "/next"):
            sent: list[bytes] = []

            async def send(data: bytes, sent: list[bytes] = sent) -> None:
                sent.append(data)

            head = RequestHead("GET", f"https://cmg.upstream.test/CCM_Proxy_ServerAuth/72057594037927939{path}", [])
            await forwarder.handle(uuid.uuid4(), head, b"", send, config, "cmg#1", whole_replies=True)
            frames[path] = [decode(data) for data in sent]

    _run_mp(tls, scripts, body)
    reasons: list[str] = []
    for path in ("/declared", "/grows", "/malformed"):
        last = frames[path][-1]
        assert last.kind == Kind.ABORT and last.json()["status"] == 502, (path, frames[path])
        reasons.append(last.json()["reason"])
    assert "exceeds 1024" in reasons[0] and "exceeds 1024" in reasons[1] and "Transfer-Encoding" in reasons[2]
    (whole,) = frames["/next"]
    head, reply_body = split_whole(whole)
    assert ResponseHead.from_json(head).status == 200 and reply_body == b"hello"
