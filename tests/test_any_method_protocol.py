"""The any-method listener protocol (cmglab/runtime/anyverb.py): llhttp fed a stand-in for a method it does not
know (CcmMessaging's CCM_POST) while the application sees the method that was sent, over a real socket: one
request at a time, several on one keep-alive connection, pipelined in one write (Content-Length, chunked and
bodyless, mixed with known methods), a head a byte at a time; the body bytes reach the application unchanged
even when they look like a CCM_POST head; a bad method token is still a 400; an absolute-form target is given
to the application as it came; review 3's streams (findings 2-4): a chunk of LFs costs what letters do, an
Upgrade is refused before its body runs, a Content-Length that is not digits is refused, and no method is
stamped on the next message."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cmglab.runtime.server import Listener, Service
from tests.support.lab import reserve_ports
from tests.support.threaded import ThreadedService


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """Answers `<method> <path> <body>`."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    reply = scope["method"].encode() + b" " + scope["path"].encode() + b" " + body
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(reply)).encode())]}
    )
    await send({"type": "http.response.body", "body": reply})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    (p,) = reserve_ports(1)
    with ThreadedService(Service("anyverb", [Listener("anyverb", echo, p, http="any-method")])):
        yield p


def request(method: bytes, path: bytes, body: bytes | None = None, chunked: bool = False) -> bytes:
    head = method + b" " + path + b" HTTP/1.1\r\nHost: mp\r\n"
    if chunked:
        assert body is not None
        lines = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]) if part)
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + lines + b"0\r\n\r\n"
    if body is not None:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return head + b"\r\n"


def replies(sock: socket.socket, count: int) -> list[bytes]:
    """The bodies of COUNT replies (each with a Content-Length)."""
    buf, out = b"", list[bytes]()
    while len(out) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(buf) >= end + 4 + length:
                status = head.split(b" ")[1]
                out.append(status + b" " + buf[end + 4 : end + 4 + length])
                buf = buf[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} replies"
        buf += chunk
    return out


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


# a body that contains what a pipelined CCM_POST head looks like: it must reach the application unchanged
TRAP = b"x\r\n\r\nCCM_POST /trap HTTP/1.1\r\nContent-Length: 0\r\n\r\n"


def test_ccm_post_one_at_a_time_on_one_connection(port: int) -> None:
    with connect(port) as s:
        for body in (b"one", TRAP, b""):
            s.sendall(request(b"CCM_POST", b"/ccm_system/request", body))
            assert replies(s, 1) == [b"200 CCM_POST /ccm_system/request " + body]
        s.sendall(request(b"GET", b"/x"))
        assert replies(s, 1) == [b"200 GET /x "]


def test_pipelined_in_one_write(port: int) -> None:
    sent = [
        (request(b"CCM_POST", b"/a", TRAP), b"200 CCM_POST /a " + TRAP),
        (request(b"GET", b"/b"), b"200 GET /b "),
        (request(b"CCM_POST", b"/c", b"chunked body " + TRAP, chunked=True), b"200 CCM_POST /c chunked body " + TRAP),
        (request(b"CCM_POST", b"/d"), b"200 CCM_POST /d "),
        (request(b"PROPFIND", b"/e"), b"200 PROPFIND /e "),  # the stand-in itself stays what it is
        (request(b"POST", b"/f", b"ccm"), b"200 POST /f ccm"),
        (request(b"X", b"/g", b"1"), b"200 X /g 1"),  # any token, as h11 took it
        (request(b"CCM_POST", b"/h", b"last"), b"200 CCM_POST /h last"),
    ]
    with connect(port) as s:
        s.sendall(b"".join(r for r, _ in sent))
        assert replies(s, len(sent)) == [want for _, want in sent]


def test_a_byte_at_a_time(port: int) -> None:
    data = b"\r\n" + request(b"CCM_POST", b"/slow", TRAP) + request(b"CCM_POST", b"/next", b"z", chunked=True)
    with connect(port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            s.sendall(data[i : i + 1])
        assert replies(s, 2) == [b"200 CCM_POST /slow " + TRAP, b"200 CCM_POST /next z"]


@pytest.mark.parametrize("line", [b"CCM(POST) /x HTTP/1.1", b"C" * 80 + b" /x HTTP/1.1"])
def test_a_bad_method_is_still_400(port: int, line: bytes) -> None:
    with connect(port) as s:
        s.sendall(line + b"\r\nHost: mp\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 ")


def test_an_absolute_form_target_reaches_the_app_as_it_came(port: int) -> None:
    """uvicorn's httptools protocol keeps only an absolute-form target's path (its host silently dropped): the
    any-method protocol gives the target as h11 did, so that the CMG refuses `CCM_POST https://evil/...`."""
    with connect(port) as s:
        s.sendall(request(b"CCM_POST", b"https://evil/CCM_Proxy_ServerAuth/1/x?q", b"a"))
        s.sendall(request(b"GET", b"http://h/b%20c"))
        assert replies(s, 2) == [b"200 CCM_POST https://evil/CCM_Proxy_ServerAuth/1/x a", b"200 GET http://h/b c "]


@pytest.mark.parametrize(
    "head",
    [
        b"CCM_POST /x HTTP/1.1\r\nHost: mp\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"CCM_POST /x HTTP/1.1\r\nHost: mp\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"CCM_POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: mp\r\n\r\n",
    ],
)
def test_what_h11_refused_is_still_400(port: int, head: bytes) -> None:
    """llhttp takes `Transfer-Encoding: gzip, chunked` as chunked (a request smuggling shape) and a HTTP/1.1
    request without Host; h11 refused both, and so does the any-method protocol."""
    with connect(port) as s:
        s.sendall(head)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 ")


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a socket timeout fails the test: the connection stayed open)."""
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    return reply


def chunked_cost(port: int, data: bytes) -> float:
    """CPU seconds of this process (the listener runs in a thread of it) for one CCM_POST of DATA as one chunk."""
    head = b"CCM_POST /big HTTP/1.1\r\nHost: mp\r\nTransfer-Encoding: chunked\r\n\r\n"
    with connect(port) as s:
        start = time.process_time()
        s.sendall(head + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
        assert replies(s, 1) == [b"200 CCM_POST /big " + data]
        return time.process_time() - start


def test_a_chunk_of_newlines_costs_what_a_chunk_of_letters_does(port: int) -> None:
    """review3 finding 2: chunk data was fed to llhttp one line at a time (a chunk of LFs cost superlinear CPU on
    the event loop, unauthenticated); it is fed by the chunk sizes now, whatever the data holds."""
    size = 300_000
    letters = min(chunked_cost(port, b"x" * size) for _ in range(3))
    newlines = min(chunked_cost(port, b"\n" * size) for _ in range(3))
    assert newlines <= 4 * letters + 0.05, (newlines, letters)


@pytest.mark.parametrize("upgrade", [b"foo", b"websocket", b"h2c"])
def test_an_upgrade_is_refused_and_its_body_never_runs(port: int, upgrade: bytes) -> None:
    """review3 finding 3: llhttp stops at an Upgrade head; its body was then run as the next request (smuggling).
    These listeners serve no upgrade: 400 and the connection closed, the body never parsed."""
    hidden = b"GET /hidden HTTP/1.1\r\nHost: mp\r\n\r\n"
    head = b"CCM_POST /ccm_system/request HTTP/1.1\r\nHost: mp\r\nConnection: Upgrade\r\nUpgrade: %s\r\n" % upgrade
    with connect(port) as s:
        s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden)
        reply = until_closed(s)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"hidden" not in reply and reply.count(b"HTTP/1.1") == 1


def test_connect_is_refused(port: int) -> None:
    with connect(port) as s:
        s.sendall(b"CONNECT mp:443 HTTP/1.1\r\nHost: mp:443\r\n\r\nGET /hidden HTTP/1.1\r\nHost: mp\r\n\r\n")
        reply = until_closed(s)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1") == 1


@pytest.mark.parametrize("length", [b"3 ", b"+3", b"3, 3", b"0x3", b"3\t"])
def test_a_content_length_that_is_not_digits_is_refused(port: int, length: bytes) -> None:
    """review3 finding 4: `Content-Length: 3 ` was 0 to our framing and 3 to llhttp: refused now (400, closed)."""
    with connect(port) as s:
        s.sendall(
            b"POST /a HTTP/1.1\r\nHost: mp\r\nContent-Length: "
            + length
            + b"\r\n\r\nabcGET /b HTTP/1.1\r\nHost: mp\r\n\r\n"
        )
        reply = until_closed(s)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1") == 1


def test_two_content_lengths_are_refused(port: int) -> None:
    with connect(port) as s:
        s.sendall(b"POST /a HTTP/1.1\r\nHost: mp\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")
        assert until_closed(s).startswith(b"HTTP/1.1 400 ")


def test_a_head_completing_inside_a_fed_piece_never_rewrites_the_next_body(port: int) -> None:
    """review3 finding 4 (anyverb_desync.py): after A's OWS Content-Length, B's head was parsed inside a raw piece
    and B's body (`CCM_POST /x ...`) taken for a head: rewritten to PROPFIND, the request boundary moved."""
    body_b = b"CCM_POST /x HTTP/1.1\r\n\r\n"
    with connect(port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(
            b"POST /a HTTP/1.1\r\nHost: mp\r\nContent-Length: 3 \r\n\r\nabc"
            b"POST /b HTTP/1.1\r\nHost: mp\r\nContent-Length: %d\r\n\r\n" % len(body_b)
        )
        try:
            s.sendall(body_b)
        except OSError:
            pass  # already closed
        reply = until_closed(s)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"PROPFIND" not in reply and reply.count(b"HTTP/1.1") == 1


def test_a_method_is_never_stamped_on_the_next_message(port: int) -> None:
    """review3 finding 4 (anyverb_method.py): the previous message's real method reached the next one's scope
    (a GET dispatched as CCM_POST)."""
    with connect(port) as s:
        s.sendall(
            b"CCM_POST /a HTTP/1.1\r\nHost: mp\r\nContent-Length: 3 \r\n\r\nabcGET /b HTTP/1.1\r\nHost: mp\r\n\r\n"
        )
        reply = until_closed(s)
    assert b"CCM_POST /b" not in reply and reply.startswith(b"HTTP/1.1 400 ")
    with connect(port) as s:  # and by the framing alone: a stand-in message, then a known one on one connection
        s.sendall(request(b"CCM_POST", b"/a", b"abc") + request(b"GET", b"/b") + request(b"PROPFIND", b"/c"))
        assert replies(s, 3) == [b"200 CCM_POST /a abc", b"200 GET /b ", b"200 PROPFIND /c "]


def test_a_head_ending_in_bare_lfs_never_shifts_a_boundary(port: int) -> None:
    """Our framing finds a head's end at CRLF CRLF; should llhttp end it elsewhere (bare LFs) the message ends
    where llhttp and the framing agree, or the connection is closed: never a body read as a head."""
    with connect(port) as s:
        s.sendall(b"POST /a HTTP/1.1\nHost: mp\nContent-Length: 3\n\nabcGET /hidden HTTP/1.1\r\nHost: mp\r\n\r\n")
        reply = until_closed(s)
    assert b"hidden" not in reply
