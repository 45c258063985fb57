"""The bench's load generator (cmglab/tools/bench/loadgen.py) against a small HTTP/1.1 server on a real socket:
keep-alive and handshake modes, chained requests, reply framing, errors and reconnection, and the bench's budget
alarm ending a run on uvloop. Behaviour only: its speed is measured by the bench (section 8), not asserted."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from cmglab.tools.bench import loadgen
from cmglab.tools.bench.guard import Guard

Reply = tuple[bytes, bool]  # the raw response, and whether the server closes the connection after it


def reply(status: int, body: bytes, *, chunked: bool = False) -> bytes:
    if not chunked:
        return b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
    halves = [body[: len(body) // 2], body[len(body) // 2 :]]
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in halves if c)
    return b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (status, chunks)


@dataclass
class Server:
    """A plain-HTTP server in a thread of its own; `answer(request line)` says what to send back."""

    answer: Callable[[bytes], Reply]
    connections: int = 0
    lines: list[bytes] = field(default_factory=list)
    port: int = 0

    def serve(self, sock: socket.socket, ready: threading.Event, stop: threading.Event) -> None:
        server = self

        class Http(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport
                self.buf = b""
                server.connections += 1

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                    head = self.buf[:end]
                    length = next(
                        (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
                        0,
                    )
                    self.buf = self.buf[end + 4 + length :]
                    line = head.split(b"\r\n")[0]
                    server.lines.append(line)
                    raw, close = server.answer(line)
                    assert isinstance(self.transport, asyncio.Transport)
                    # in two writes: the generator must put a reply back together from pieces
                    self.transport.write(raw[:20])
                    self.transport.write(raw[20:])
                    if close:
                        self.transport.close()
                        return

        async def main() -> None:
            srv = await asyncio.get_running_loop().create_server(Http, sock=sock)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)
            srv.close()

        asyncio.run(main())


Serve = Callable[[Callable[[bytes], Reply]], tuple[Server, loadgen.Target]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(answer: Callable[[bytes], Reply]) -> tuple[Server, loadgen.Target]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # the port is ours from here: no race
        sock.listen(64)
        server = Server(answer, port=sock.getsockname()[1])
        ready, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=server.serve, args=(sock, ready, stop), daemon=True)
        thread.start()
        assert ready.wait(10)
        stops.append((stop, thread))
        return server, loadgen.Target("127.0.0.1", server.port, "bench.lab.test", None)

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(10)


def test_keep_alive_reuses_each_connection_and_counts_every_status(serve: Serve) -> None:
    server, target = serve(lambda line: (reply(404 if b"/missing" in line else 200, b"ok"), False))
    paths = ["/a", "/missing"]
    result = loadgen.run_sync(
        "t", target, lambda i: loadgen.Request(path=paths[i % 2]), connections=3, duration=30, max_requests=40
    )
    assert (result.requests, result.errors, result.statuses) == (40, 0, {200: 20, 404: 20})
    assert server.connections == 3 and len(result.latencies_ms) == 40
    assert result.percentile(50) > 0 and result.summary()["requests"] == 40


def test_handshake_mode_opens_a_connection_per_request(serve: Serve) -> None:
    server, target = serve(lambda _line: (reply(200, b"x" * 3000), False))
    result = loadgen.run_sync(
        "t", target, lambda _i: loadgen.Request(path="/"), connections=2, duration=30, max_requests=9, keepalive=False
    )
    assert (result.requests, result.errors, server.connections) == (9, 0, 9)


def test_a_chained_request_is_built_from_the_first_reply_on_the_same_connection(serve: Serve) -> None:
    def answer(line: bytes) -> Reply:
        if line.startswith(b"POST /nonce"):
            return reply(200, b"n-123", chunked=True), False
        return reply(201 if b"/signed/n-123 " in line else 400, b""), False

    def signed(body: bytes) -> loadgen.Request:
        return loadgen.Request("POST", f"/signed/{body.decode()}")

    server, target = serve(answer)
    result = loadgen.run_sync(
        "t",
        target,
        lambda _i: loadgen.Request("POST", "/nonce", then=signed),
        connections=2,
        duration=30,
        max_requests=6,
        keepalive=False,
    )
    # each pair is one operation with the second reply's status, on one connection of its own
    assert (result.requests, result.errors, result.statuses, server.connections) == (6, 0, {201: 6}, 6)
    assert len(server.lines) == 12


def test_a_connection_the_server_closes_counts_an_error_and_is_opened_again(serve: Serve) -> None:
    server, target = serve(lambda line: (reply(200, b"ok"), b"/bye" in line))
    result = loadgen.run_sync(
        "t",
        target,
        lambda i: loadgen.Request(path="/bye" if i % 3 == 0 else "/"),
        connections=1,
        duration=30,
        max_requests=9,
    )
    # every third reply closes: the request after it finds the connection gone (an error), the next reconnects
    assert result.errors > 0 and result.requests + result.errors == 9 and server.connections > 1


def test_replies_are_framed_by_length_or_chunks() -> None:
    one, two = reply(200, b"hello"), reply(503, b"abcdef", chunked=True)
    assert loadgen.parse_response(one[:-1]) is None and loadgen.parse_response(two[:-3]) is None
    assert loadgen.parse_response(one + two) == (200, b"hello", len(one))
    assert loadgen.parse_response(two) == (503, b"abcdef", len(two))
    bare = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"
    assert loadgen.parse_response(bare) == (204, b"", len(bare))


def test_the_bench_budget_ends_a_run_waiting_on_a_server_that_never_answers() -> None:
    """uvloop logs an exception a signal handler raises and goes on: the generator's loop raises the budget's
    alarm (guard.py) out of the run instead, so a hung server cannot hang the bench."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepted by the kernel, never read, never answered
    target = loadgen.Target("127.0.0.1", listener.getsockname()[1], "bench.lab.test", None)
    guard = Guard()
    try:
        got = guard.run(
            "s",
            "1. Hung",
            0.5,
            lambda: loadgen.run_sync("t", target, lambda _i: loadgen.Request(), connections=2, duration=600),
        )
    finally:
        listener.close()
    assert got is None and [f["timed_out"] for f in guard.failed] == [True]
