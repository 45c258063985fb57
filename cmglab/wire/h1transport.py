"""A lean HTTP/1.1 transport for httpx's synchronous Client: blocking sockets, the ssl module's TLS, llhttp
(httptools) to read replies, a pool of idle keep-alive connections per (scheme, host, port, the name TLS
verified), and the lab's curl-style name mapping (`HostMap`).

Why not httpx's own transport here: the client agent is synchronous, and profiling a fleet's onboarding
(`cmglab bench`, section 4) showed httpcore and h11 costing about as much CPU per request as the agent's own
work between requests. This keeps what the agent relies on and drops the rest (HTTP/2, proxies, UNIX sockets,
retries, streaming replies):

- TLS with the caller's context: server verification, the client certificate it holds, SNI and the name
  check on the URL's real host (or the request's `sni_hostname` extension) while the socket goes to the mapped
  address; a connection is pooled under the name it was verified for (and the URL's), so one verified for a
  name is never used for a request that would check another;
- httpx's `trace` request extension, for the events `connection.connect_tcp.{started,complete}` and
  `connection.start_tls.{started,complete}` as httpcore sends them (`return_value` a stream whose
  `get_extra_info("ssl_object")` is the TLS socket): the agent checks a new connection's certificate there;
- TLS session resumption with a `SessionCache` (cmglab/wire/tls_sessions.py, as Windows' Schannel): a new
  connection offers the session kept for (the name it verifies, the port, the transport's client credential); a
  connection's session is kept once its handshake and the trace hook's checks passed and its first reply was read;
- httpx's timeouts (the request's `timeout` extension: connect for TCP and the TLS handshake, read, write);
- httpx's exceptions with httpcore's texts (ConnectError/ConnectTimeout chained to the socket or ssl error,
  ReadTimeout, WriteTimeout, ReadError, RemoteProtocolError "Server disconnected without sending a
  response."); like httpcore, a request whose body the server stopped reading still gets the reply it sent;
- keep-alive as the reply allows it (llhttp's verdict), never after a request whose send failed (the
  connection is not at a clean boundary), an idle connection dropped after `keepalive_expiry` seconds or when
  its socket turns readable while idle (the server closed it).

The whole reply body is read before the Response is returned (the agent reads every reply whole).

`H1Client` is httpx.Client with a shorter road for the common request: URLs parsed once per process (httpx
parses a URL string with a validating parser on every request), and `send` without httpx's auth and redirect
generators and its cookie bookkeeping when there is nothing to keep.
"""

from __future__ import annotations

import functools
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httptools
import httpx

from cmglab.wire.httpclient import HostMap
from cmglab.wire.tls_sessions import SessionCache, SessionKey

READ_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024  # a reply head larger than this is a protocol error (h11's own limit is 16 KiB + 1)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's token: a method, a header name
_BAD_IN_VALUE = re.compile(rb"[\r\n\x00]")  # what would end a header line early (h11 refuses them too)
Trace = Callable[[str, dict[str, Any]], None]
_Key = tuple[str, str, int, str]  # a pooled connection's scheme, host (A-labels), port and the name TLS verified


class _Stream:
    """What a trace hook's `return_value` offers of a connection (httpcore's NetworkStream, in part)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self.sock if isinstance(self.sock, ssl.SSLSocket) else None
        if info == "socket":
            return self.sock
        if info == "server_addr":
            return self.sock.getpeername()
        if info == "client_addr":
            return self.sock.getsockname()
        return None

    def close(self) -> None:
        self.sock.close()


class _PastTheReply(Exception):
    """Stops llhttp at bytes past the reply's end (another reply, part of one, garbage)."""


class _Reply:
    """llhttp's callbacks for one reply; interim 1xx replies (other than 101) are skipped."""

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only  # a reply to HEAD: complete once its head is read
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head_done = False
        self.done = False
        self.status = 0
        self.keep_alive = False  # llhttp's verdict, read with the head (the parser resets once the reply ends)
        self.version = b"HTTP/1.1"
        self.past = False  # llhttp began another message after this reply's end, within the same read

    def on_message_begin(self) -> None:
        if self.done:  # llhttp parses on past a reply's end within one feed: nothing after it may join it
            self.past = True
            raise _PastTheReply

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            return
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        self.version = b"HTTP/" + self.parser.get_http_version().encode()
        if self.head_only:
            self.done = True

    def on_body(self, data: bytes) -> None:
        if self.done:  # a reply to HEAD ends with its head (llhttp does not know it answers HEAD)
            self.past = True
            raise _PastTheReply
        self.body.append(data)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:  # interim: the real reply follows
            self.reason, self.headers, self.status = b"", [], 0
            return
        self.done = True

    def framed(self) -> bool:
        """Whether the reply says where its body ends (else it ends when the server closes)."""
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
                return True
        return False


class H1Transport(httpx.BaseTransport):
    def __init__(
        self,
        ctx: ssl.SSLContext | None,
        hosts: HostMap | None = None,
        *,
        keepalive_expiry: float = 5.0,
        max_idle_per_host: int = 10,
        sessions: SessionCache | None = None,
        credential: str | None = None,
    ) -> None:
        self.ctx, self.hosts = ctx, hosts or {}
        # TLS sessions resumed from (and kept in) SESSIONS under this client credential (the client certificate
        # CTX holds, None without): cmglab/wire/tls_sessions.py
        self.sessions, self.credential = sessions, credential
        if ctx is not None:
            ctx.set_alpn_protocols(["http/1.1"])  # as httpcore offers it
        self.keepalive_expiry, self.max_idle_per_host = keepalive_expiry, max_idle_per_host
        self._idle: dict[_Key, list[tuple[socket.socket, float]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    # the exchange

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme}://'.")
        # the name on the wire: IDNA 2008 A-labels, as the Host header says and httpcore used
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORTS[scheme]
        # the name the handshake verifies is part of the key: a connection is reused only for that name
        verified = (request.extensions.get("sni_hostname") or host) if scheme == "https" else ""
        key = (scheme, host, port, verified)  # httpx keeps the host lower-case
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        data = _serialise(request)
        sock = self._pooled(key)
        new = sock is None
        if sock is None:
            sock = self._connect(request, key, timeouts)
        try:
            sent = _send(sock, data, timeouts.get("write"))
            reply, until_close = _receive(sock, request.method == "HEAD", timeouts.get("read"))
        except BaseException:
            if new and isinstance(sock, ssl.SSLSocket) and self.sessions is not None:
                # TLS 1.3: a server refuses a resumed session after the client's handshake ended (a revoked
                # certificate's): the session it refused is not offered again
                self._forget(bool(sock.session_reused), self.sessions.key(verified, port, self.credential))
            sock.close()
            raise
        if new and isinstance(sock, ssl.SSLSocket) and self.sessions is not None:
            # verified (the handshake, the trace hook's checks) and a reply read: a TLS 1.3 ticket is in by now
            self.sessions.keep(sock.context, self.sessions.key(verified, port, self.credential), sock)
        keep = sent and not until_close and reply.keep_alive and not _says_close(request.headers.raw)
        if keep and reply.status != 101:
            self._release(key, sock)
        else:
            sock.close()
        return httpx.Response(
            reply.status,
            headers=reply.headers,
            stream=httpx.ByteStream(b"".join(reply.body)),
            extensions={
                "http_version": b"HTTP/" + reply.parser.get_http_version().encode(),
                "reason_phrase": reply.reason,
            },
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for socks in idle.values():
            for sock, _ in socks:
                sock.close()

    # the pool

    def _pooled(self, key: _Key) -> socket.socket | None:
        now = time.monotonic()
        while True:
            with self._lock:
                socks = self._idle.get(key)
                if not socks:
                    return None
                sock, since = socks.pop()
            if now - since < self.keepalive_expiry and not _readable(sock):
                return sock
            sock.close()  # expired, or the server closed it (or sent what nobody asked for)

    def _release(self, key: _Key, sock: socket.socket) -> None:
        with self._lock:
            socks = self._idle.setdefault(key, [])
            if not self._closed and len(socks) < self.max_idle_per_host:
                socks.append((sock, time.monotonic()))
                return
        sock.close()

    def _connect(self, request: httpx.Request, key: _Key, timeouts: dict[str, float | None]) -> socket.socket:
        scheme, host, port, server_hostname = key
        trace: Trace | None = request.extensions.get("trace")
        timeout = timeouts.get("connect")
        address = (self.hosts.get((host, port), host), port)
        if trace is not None:
            trace("connection.connect_tcp.started", {"host": address[0], "port": port, "timeout": timeout})
        try:
            sock = socket.create_connection(address, timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as e:
            raise httpx.ConnectTimeout(str(e)) from e
        except OSError as e:
            raise httpx.ConnectError(str(e)) from e
        if trace is not None:
            trace("connection.connect_tcp.complete", {"return_value": _Stream(sock)})
        if scheme != "https":
            return sock
        # server_hostname: never url.host, the Unicode form: ssl would encode it by IDNA 2003 (faß -> fass)
        if trace is not None:
            trace("connection.start_tls.started", {"server_hostname": server_hostname, "timeout": timeout})
        ctx = self.ctx or ssl.create_default_context()
        session_key: SessionKey | None = None
        session: ssl.SSLSession | None = None
        if self.sessions is not None:
            session_key = self.sessions.key(server_hostname, port, self.credential)
            session = self.sessions.offer(ctx, session_key)
        try:
            sock.settimeout(timeout)
            tls = ctx.wrap_socket(sock, server_hostname=server_hostname, session=session)
        except TimeoutError as e:
            sock.close()
            self._forget(session is not None, session_key)
            raise httpx.ConnectTimeout(str(e)) from e
        except OSError as e:  # ssl.SSLError among them (a failed verification: SSLCertVerificationError)
            sock.close()
            self._forget(session is not None, session_key)
            raise httpx.ConnectError(str(e)) from e
        if trace is not None:
            try:
                trace("connection.start_tls.complete", {"return_value": _Stream(tls)})
            except BaseException:
                tls.close()
                self._forget(session is not None, session_key)
                raise
        return tls

    def _forget(self, offered: bool, key: SessionKey | None) -> None:
        """A connection that failed with an offered (or resumed) session: the next one makes a full handshake."""
        if offered and self.sessions is not None and key is not None:
            self.sessions.forget(key)


def _serialise(request: httpx.Request) -> bytes:
    """The request head and body, as one buffer (a small request goes out in one write)."""
    method = request.method.encode("ascii")
    if not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"Illegal method {request.method!r}")
    parts = [method, b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name):
            raise httpx.LocalProtocolError(f"Illegal header name {name!r}")
        if _BAD_IN_VALUE.search(value):
            raise httpx.LocalProtocolError("Illegal header value")
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    stream = request.stream
    assert isinstance(stream, httpx.SyncByteStream)
    for chunk in stream:
        if chunked and chunk:
            parts += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        elif chunk:
            parts.append(chunk)
    if chunked:
        parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def _send(sock: socket.socket, data: bytes, timeout: float | None) -> bool:
    """Whether the whole request went out."""
    try:
        sock.settimeout(timeout)
        sock.sendall(data)
    except TimeoutError as e:
        raise httpx.WriteTimeout(str(e)) from e
    except OSError:
        # as httpcore: the server may have answered (413, 401) and closed before reading the whole request;
        # its reply is read below, and a connection that has none fails there (either way it is never reused)
        return False
    return True


def _receive(sock: socket.socket, head_only: bool, timeout: float | None) -> tuple[_Reply, bool]:
    """The reply, and whether its connection cannot carry another exchange (a body that ran to the connection's
    end, or bytes past the reply)."""
    reply = _Reply(head_only)
    received = 0
    try:
        sock.settimeout(timeout)
        while not reply.done:
            try:
                data = sock.recv(READ_BYTES)
            except TimeoutError as e:
                raise httpx.ReadTimeout(str(e)) from e
            except OSError as e:
                if received:
                    raise httpx.ReadError(str(e)) from e
                data = b""  # reset before a reply: as a server that closed
            if not data:
                if not received:
                    raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
                if reply.head_done and not reply.framed():
                    reply.done = True
                    return reply, True
                if not reply.head_done:
                    raise httpx.RemoteProtocolError("peer closed connection without sending a complete reply head")
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            received += len(data)
            reply.parser.feed_data(data)
            if not reply.head_done and received > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("the reply head is too large")
    except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:  # nothing here asks for an Upgrade
        if reply.past:  # the reply was whole before what followed it: it stands, its connection (out of step) goes
            return reply, True
        raise httpx.RemoteProtocolError(f"malformed reply: {e}") from e
    return reply, False


def _readable(sock: socket.socket) -> bool:
    """An idle connection with something to read (its close, most likely) cannot take a request."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _says_close(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(n.lower() == b"connection" and b"close" in v.lower() for n, v in headers)


_HTTPX_LOG = logging.getLogger("httpx")
URLS_MAX = 512  # distinct URL strings kept parsed (a fleet's devices ask the same few dozen)


@functools.lru_cache(maxsize=URLS_MAX)  # thread-safe
def parsed_url(url: str) -> httpx.URL:
    """httpx.URL(url), parsed once per process (an httpx.URL is immutable: its copy_* methods make new ones)."""
    return httpx.URL(url)


class H1Client(httpx.Client):
    """httpx.Client (same API, same Request and Response objects, event hooks, timeouts) for one transport and
    no proxies: HTTP(S)_PROXY, ALL_PROXY and NO_PROXY are read on neither road (httpx mounts environment proxies
    only for a client built without a transport; the agent talks only to the lab, by its own name map). `send`
    takes a shorter road for a plain request, the agent's every one: request hooks, the transport, cookies kept
    only when the reply sets some, response hooks, the body read. A request with auth, redirects to follow or a
    streamed reply goes through httpx's own `send`."""

    def __init__(self, *, transport: httpx.BaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self._only_transport = transport
        self._encoding = kwargs.get("default_encoding", "utf-8")

    def build_request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
        return super().build_request(method, parsed_url(url) if isinstance(url, str) else url, **kwargs)

    def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        follow = self.follow_redirects if follow_redirects is httpx.USE_CLIENT_DEFAULT else follow_redirects
        plain_auth = auth is None or (auth is httpx.USE_CLIENT_DEFAULT and self.auth is None)
        if stream or follow or not plain_auth or self.is_closed:
            return super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        request.extensions.setdefault("timeout", self.timeout.as_dict())
        for hook in self.event_hooks["request"]:
            hook(request)
        started = time.perf_counter()
        try:
            response = self._only_transport.handle_request(request)
        except httpx.RequestError as e:  # as httpx's request_context: the error names its request
            e.request = request
            raise
        response.request = request
        if "set-cookie" in response.headers:
            self.cookies.extract_cookies(response)
        response.default_encoding = self._encoding
        if _HTTPX_LOG.isEnabledFor(logging.INFO):  # httpx's own line
            _HTTPX_LOG.info(
                'HTTP Request: %s %s "%s %d %s"',
                request.method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        try:
            for hook in self.event_hooks["response"]:
                hook(response)
            response.read()
        except BaseException:
            response.close()
            raise
        response.elapsed = timedelta(seconds=time.perf_counter() - started)
        return response
