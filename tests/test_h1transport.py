"""The agent's lean HTTP/1.1 transport and client (cmglab/wire/h1transport.py) against a scripted server on a
real socket with real TLS: name mapping with SNI and the name check on the real name, keep-alive and what ends
it, reply framing (length, chunked, to the close), httpcore's errors and texts, the handshake trace hook, header
injection refused, and the client's hooks, cookies and fallbacks to httpx's own send."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from cmglab.pki import builders
from cmglab.wire.h1transport import H1Client, H1Transport

NAME = "h1.lab.test"
Handler = Callable[[socket.socket, int], None]  # one accepted connection and its number (0, 1, ...)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("h1pki")
    ca_key = builders.new_key()
    ca = builders.self_signed_ca(ca_key, builders.name("H1 Test Root"))
    key = builders.new_key()
    cert = builders.leaf(
        key.public_key(), builders.name(NAME), ca, ca_key, ekus=[ExtendedKeyUsageOID.SERVER_AUTH], san=[NAME]
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(builders.cert_pem(ca))
    paths["cert"].write_bytes(builders.cert_pem(cert))
    paths["key"].write_bytes(builders.key_pem(key))
    return paths


def client_context(pki: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki["ca"]))
    return ctx


@contextmanager
def server(handler: Handler, pki: dict[str, Path] | None = None) -> Iterator[tuple[int, list[str]]]:
    """A loopback listener running `handler` per connection (TLS when pki is given); yields its port and the
    SNI names the clients sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    snis: list[str] = []
    ctx = None
    if pki is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki["cert"]), str(pki["key"]))

        def sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            snis.append(name or "")

        ctx.sni_callback = sni
    done = threading.Event()

    def serve() -> None:
        n = 0
        while not done.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                conn = ctx.wrap_socket(raw, server_side=True) if ctx is not None else raw
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            threading.Thread(target=_run, args=(handler, conn, n), daemon=True).start()
            n += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, snis
    finally:
        done.set()
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (close alone does not, on Linux)
        except OSError:
            pass
        listener.close()
        thread.join(5)


def _run(handler: Handler, conn: socket.socket, n: int) -> None:
    try:
        handler(conn, n)
    except OSError:
        pass
    finally:
        conn.close()


def read_request(conn: socket.socket) -> bytes:
    """One request head (and a Content-Length body) from the connection; b"" when the client closed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            while len(body) < length:
                body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def keep_alive(reply: bytes) -> Handler:
    """Answer every request on the connection with `reply`."""

    def handle(conn: socket.socket, n: int) -> None:
        while read_request(conn):
            conn.sendall(reply)

    return handle


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_keep_alive_one_connection_and_the_mapped_name(pki: dict[str, Path]) -> None:
    accepted: list[int] = []

    def handle(conn: socket.socket, n: int) -> None:
        accepted.append(n)
        keep_alive(OK)(conn, n)

    with server(handle, pki) as (port, snis):
        transport = H1Transport(client_context(pki), {(NAME, port): "127.0.0.1"})
        with httpx.Client(transport=transport) as c:
            replies = [c.get(f"https://{NAME}:{port}/x?y=1") for _ in range(3)]
    assert [r.text for r in replies] == ["ok"] * 3
    assert accepted == [0]  # one connection for three requests
    assert snis == [NAME]  # SNI and the certificate check on the real name, the socket to the mapped address
    assert replies[0].http_version == "HTTP/1.1" and replies[0].reason_phrase == "OK"


def test_the_name_check_is_on_the_real_name(pki: dict[str, Path]) -> None:
    with server(keep_alive(OK), pki) as (port, _):
        transport = H1Transport(client_context(pki), {("other.lab.test", port): "127.0.0.1"})
        with httpx.Client(transport=transport) as c, pytest.raises(httpx.ConnectError) as refused:
            c.get(f"https://other.lab.test:{port}/")
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


def test_an_untrusted_server_fails_verification(pki: dict[str, Path]) -> None:
    with server(keep_alive(OK), pki) as (port, _):
        transport = H1Transport(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), {(NAME, port): "127.0.0.1"})
        with httpx.Client(transport=transport) as c, pytest.raises(httpx.ConnectError) as refused:
            c.get(f"https://{NAME}:{port}/")
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


def test_the_handshake_trace_hook_sees_the_peer_certificate_and_can_refuse(pki: dict[str, Path]) -> None:
    events: list[str] = []
    peers: list[bytes] = []

    def trace(event: str, info: dict[str, Any]) -> None:
        events.append(event)
        if event == "connection.start_tls.complete":
            peers.append(info["return_value"].get_extra_info("ssl_object").getpeercert(True))

    class Refused(httpx.TransportError):
        pass

    def refuse(event: str, info: dict[str, Any]) -> None:
        if event == "connection.start_tls.complete":
            raise Refused("no")

    with server(keep_alive(OK), pki) as (port, _):
        hosts = {(NAME, port): "127.0.0.1"}
        with httpx.Client(transport=H1Transport(client_context(pki), hosts)) as c:
            c.get(f"https://{NAME}:{port}/", extensions={"trace": trace})
            c.get(f"https://{NAME}:{port}/", extensions={"trace": trace})  # the kept connection: no new handshake
        with httpx.Client(transport=H1Transport(client_context(pki), hosts)) as c, pytest.raises(Refused):
            c.get(f"https://{NAME}:{port}/", extensions={"trace": refuse})
    assert events == [
        "connection.connect_tcp.started",
        "connection.connect_tcp.complete",
        "connection.start_tls.started",
        "connection.start_tls.complete",
    ]
    assert peers == [ssl.PEM_cert_to_DER_cert(pki["cert"].read_text())]


def test_reply_framing_length_chunked_and_to_the_close() -> None:
    replies = {
        0: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        1: b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        2: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
    }

    def handle(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(replies[n])

    with server(handle) as (port, _), httpx.Client(transport=H1Transport(None)) as c:
        assert c.get(f"http://127.0.0.1:{port}/").text == "abcde"
        assert c.get(f"http://127.0.0.1:{port}/").text == "until the end"
        reply = c.get(f"http://127.0.0.1:{port}/")
        assert (reply.status_code, reply.text) == (201, "new")


def test_httpcore_errors_and_texts() -> None:
    def close_at_once(conn: socket.socket, n: int) -> None:
        read_request(conn)

    def short_body(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    def silent(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.recv(1)  # until the client gives up

    def garbage(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    with httpx.Client(transport=H1Transport(None)) as c:
        with server(close_at_once) as (port, _), pytest.raises(httpx.RemoteProtocolError) as e:
            c.get(f"http://127.0.0.1:{port}/")
        assert str(e.value) == "Server disconnected without sending a response."
        with server(short_body) as (port, _), pytest.raises(httpx.RemoteProtocolError) as e:
            c.get(f"http://127.0.0.1:{port}/")
        assert "peer closed connection without sending complete message body" in str(e.value)
        with server(silent) as (port, _), pytest.raises(httpx.ReadTimeout):
            c.get(f"http://127.0.0.1:{port}/", timeout=0.3)
        with server(garbage) as (port, _), pytest.raises(httpx.RemoteProtocolError):
            c.get(f"http://127.0.0.1:{port}/")
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()
        with pytest.raises(httpx.ConnectError):
            c.get(f"http://127.0.0.1:{port}/")


def test_a_closed_idle_connection_is_not_reused() -> None:
    closed = threading.Event()
    accepted: list[int] = []

    def answer_then_close(conn: socket.socket, n: int) -> None:
        accepted.append(n)
        read_request(conn)
        conn.sendall(OK)  # says nothing of closing, then closes: the client must notice before its next request
        conn.close()
        closed.set()

    with server(answer_then_close) as (port, _), httpx.Client(transport=H1Transport(None)) as c:
        assert c.get(f"http://127.0.0.1:{port}/").text == "ok"
        assert closed.wait(5)
        assert c.get(f"http://127.0.0.1:{port}/").text == "ok"  # a new connection, not an error
    assert accepted == [0, 1]


def test_an_idle_connection_expires() -> None:
    accepted: list[int] = []

    def handle(conn: socket.socket, n: int) -> None:
        accepted.append(n)
        keep_alive(OK)(conn, n)

    with server(handle) as (port, _), httpx.Client(transport=H1Transport(None, keepalive_expiry=0)) as c:
        c.get(f"http://127.0.0.1:{port}/")
        c.get(f"http://127.0.0.1:{port}/")
    assert accepted == [0, 1]


def test_an_early_reply_is_read() -> None:
    def refuse_large(conn: socket.socket, n: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        while conn.recv(65536):  # the rest of the body, read after the reply went out
            pass

    with server(refuse_large) as (port, _), httpx.Client(transport=H1Transport(None)) as c:
        reply = c.post(f"http://127.0.0.1:{port}/", content=b"x" * (8 * 1024 * 1024))
    assert reply.status_code == 413


def test_header_injection_is_refused() -> None:
    with httpx.Client(transport=H1Transport(None)) as c:
        for headers in ({"X-A": "one\r\nX-Injected: two"}, {"X-A": "nul\x00"}):
            with pytest.raises(httpx.LocalProtocolError):
                c.get("http://127.0.0.1:9/", headers=headers)
        with pytest.raises(httpx.LocalProtocolError):
            c.request("GET POST", "http://127.0.0.1:9/")


def test_a_chunked_request_body_is_framed() -> None:
    seen: list[bytes] = []

    def handle(conn: socket.socket, n: int) -> None:
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += conn.recv(65536)
        seen.append(data)
        conn.sendall(OK)

    def body() -> Iterator[bytes]:
        yield b"abc"
        yield b"defgh"

    with server(handle) as (port, _), httpx.Client(transport=H1Transport(None)) as c:
        assert c.post(f"http://127.0.0.1:{port}/", content=body()).status_code == 200
    assert seen[0].endswith(b"\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")


def test_client_hooks_cookies_and_httpx_send_for_the_rest() -> None:
    cookie_reply = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1; Path=/\r\nContent-Length: 2\r\n\r\nok"
    redirect = b"HTTP/1.1 302 Found\r\nLocation: /there\r\nContent-Length: 0\r\n\r\n"
    requests: list[bytes] = []

    def handle(conn: socket.socket, n: int) -> None:
        while request := read_request(conn):
            requests.append(request)
            path = request.split(b" ")[1]
            conn.sendall(cookie_reply if path == b"/cookie" else redirect if path == b"/here" else OK)

    seen: list[str] = []
    with server(handle) as (port, _):
        hooks: dict[str, list[Callable[[Any], None]]] = {
            "request": [lambda r: seen.append(f"request {r.url.path}")],
            "response": [lambda r: seen.append(f"response {r.status_code}")],
        }
        with H1Client(transport=H1Transport(None), event_hooks=hooks, timeout=5) as c:
            first = c.get(f"http://127.0.0.1:{port}/cookie")
            c.get(f"http://127.0.0.1:{port}/again")
            moved = c.get(f"http://127.0.0.1:{port}/here")
            followed = c.get(f"http://127.0.0.1:{port}/here", follow_redirects=True)
    assert first.request.url.path == "/cookie" and first.elapsed.total_seconds() >= 0 and first.text == "ok"
    assert first.request.extensions["timeout"]["read"] == 5
    assert b"cookie: s=1" in requests[1].lower()  # the cookie the first reply set is sent back
    assert moved.status_code == 302 and followed.status_code == 200 and followed.url.path == "/there"
    assert seen[:4] == ["request /cookie", "response 200", "request /again", "response 200"]


def test_client_errors_name_their_request() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with H1Client(transport=H1Transport(None)) as c, pytest.raises(httpx.ConnectError) as e:
        c.get(f"http://127.0.0.1:{port}/nothing")
    assert e.value.request.url.path == "/nothing"


def test_bytes_past_the_reply_never_join_it() -> None:
    """A reply followed, in the same read, by bytes past its end (another reply, part of one, garbage): llhttp
    parses on past the first message within one feed, and the second's status, header fields (a Set-Cookie the
    client then kept) and body joined the first reply ("okevil"), its connection pooled. Now the first reply
    stands as sent and its connection, out of step, is closed (as the connection point's MP client does)."""
    tails = [
        b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=smuggled\r\nContent-Length: 4\r\n\r\nevil",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=smuggled\r\n",  # part of a head: its whole lines joined too
        b"garbage",
    ]
    accepted: list[int] = []

    def handle(conn: socket.socket, n: int) -> None:
        accepted.append(n)
        while read_request(conn):
            conn.sendall(OK + tails[min(n, len(tails) - 1)])  # one write: one read at the client

    with server(handle) as (port, _), H1Client(transport=H1Transport(None)) as c:
        for _ in tails:
            reply = c.get(f"http://127.0.0.1:{port}/")
            assert (reply.status_code, reply.text, reply.headers.get_list("content-length")) == (200, "ok", ["2"])
            assert "set-cookie" not in reply.headers
        assert not c.cookies
    assert accepted == [0, 1, 2]  # never reused


def test_the_name_checked_is_the_urls_own_for_an_idn(pki: dict[str, Path], tmp_path: Path) -> None:
    """An internationalised name: httpx.URL.host is its Unicode form (faß.lab.test), which the ssl module and
    getaddrinfo encode by IDNA 2003 (fass.lab.test, another name); the URL, the Host header and httpcore name
    xn--fa-hia.lab.test (IDNA 2008). The transport once sent that other name as SNI and accepted its certificate."""
    ca_key = builders.new_key()
    ca = builders.self_signed_ca(ca_key, builders.name("H1 IDN Root"))
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    paths["ca"].write_bytes(builders.cert_pem(ca))

    def serve_as(name: str) -> None:
        key = builders.new_key()
        cert = builders.leaf(
            key.public_key(), builders.name(name), ca, ca_key, ekus=[ExtendedKeyUsageOID.SERVER_AUTH], san=[name]
        )
        paths["cert"].write_bytes(builders.cert_pem(cert))
        paths["key"].write_bytes(builders.key_pem(key))

    url_name, other = "xn--fa-hia.lab.test", "fass.lab.test"
    serve_as(other)  # a certificate for the IDNA 2003 name only
    with server(keep_alive(OK), paths) as (port, snis):
        hosts = {(url_name, port): "127.0.0.1", ("faß.lab.test", port): "127.0.0.1"}
        with httpx.Client(transport=H1Transport(client_context(paths), hosts)) as c:
            with pytest.raises(httpx.ConnectError) as refused:
                c.get(f"https://faß.lab.test:{port}/")
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    assert snis == [url_name]
    serve_as(url_name)
    with server(keep_alive(OK), paths) as (port, snis):
        transport = H1Transport(client_context(paths), {(url_name, port): "127.0.0.1"})
        with httpx.Client(transport=transport) as c:
            assert c.get(f"https://faß.lab.test:{port}/").text == "ok"
    assert snis == [url_name]


def test_a_connection_is_reused_only_for_the_name_it_was_verified_for(pki: dict[str, Path]) -> None:
    """A request's `sni_hostname` extension names the server the handshake verifies: a connection verified for
    that name was pooled under the URL's host alone and reused for a later request to the URL without the
    extension, whose own name (other.lab.test, not in the certificate) was never checked."""
    accepted: list[int] = []

    def handle(conn: socket.socket, n: int) -> None:
        accepted.append(n)
        keep_alive(OK)(conn, n)

    with server(handle, pki) as (port, snis):
        transport = H1Transport(client_context(pki), {("other.lab.test", port): "127.0.0.1"})
        url = f"https://other.lab.test:{port}/"
        with httpx.Client(transport=transport) as c:
            assert c.get(url, extensions={"sni_hostname": NAME}).text == "ok"
            with pytest.raises(httpx.ConnectError) as refused:
                c.get(url)  # checks other.lab.test: a new handshake, which fails
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
            assert c.get(url, extensions={"sni_hostname": NAME}).text == "ok"  # the verified one, reused
    assert snis == [NAME, "other.lab.test"] and accepted == [0]


def test_a_connection_whose_request_was_not_all_sent_is_never_pooled() -> None:
    """The server answers (keep-alive) after the head and closes without reading the body: the send fails, the
    reply is read (httpcore's early-reply rule), and the connection, not at a clean boundary, is closed rather
    than pooled."""
    closed = threading.Event()

    def answer_early_then_close(conn: socket.socket, n: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(OK)  # keep-alive by the reply's own words
        conn.close()  # with the body unread: a reset, which fails the client's send
        closed.set()

    transport = H1Transport(None)
    with server(answer_early_then_close) as (port, _), httpx.Client(transport=transport) as c:
        reply = c.post(f"http://127.0.0.1:{port}/", content=b"x" * (64 * 1024 * 1024))
        assert (reply.status_code, reply.text) == (200, "ok")
        assert closed.wait(5)
        assert not any(transport._idle.values())  # closed, never pooled


def test_a_head_replys_body_bytes_never_join_it() -> None:
    """A reply to HEAD ends with its head, whatever its Content-Length says: body bytes sent with it (in the same
    read) once joined the reply (llhttp is not told it answers HEAD); now they are bytes past the reply, and its
    connection, out of step, is closed."""
    accepted: list[int] = []

    def handle(conn: socket.socket, n: int) -> None:
        accepted.append(n)
        keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")(conn, n)

    with server(handle) as (port, _), httpx.Client(transport=H1Transport(None)) as c:
        for _ in range(2):
            reply = c.head(f"http://127.0.0.1:{port}/")
            assert (reply.status_code, reply.content, reply.headers["content-length"]) == (200, b"", "4")
    assert accepted == [0, 1]


@pytest.mark.parametrize("follow_redirects", [False, True])  # the short road, and httpx's own send
def test_the_client_reads_no_proxy_from_the_environment_on_either_road(
    monkeypatch: pytest.MonkeyPatch, follow_redirects: bool
) -> None:
    """H1Client sends on its one transport on both roads: its short road never reads HTTP(S)_PROXY/ALL_PROXY, and
    httpx's own send (auth, redirects, streams) takes no proxy from the environment either, since httpx makes its
    proxy mounts only for a client built without a transport (review 5 thought it did: it did not; this guards it,
    as a mount would be httpx's own transport, without the agent's TLS context, name map and revocation check)."""
    proxied: list[bytes] = []

    def proxy(conn: socket.socket, n: int) -> None:
        while request := read_request(conn):
            proxied.append(request)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")

    with server(keep_alive(OK)) as (port, _), server(proxy) as (proxy_port, _):
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy_port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        with H1Client(transport=H1Transport(None), timeout=5) as c:
            reply = c.get(f"http://127.0.0.1:{port}/", follow_redirects=follow_redirects)
    assert (reply.text, proxied) == ("ok", [])
