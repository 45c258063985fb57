"""httptools (llhttp) for listeners that must take any method token, such as CcmMessaging's `CCM_POST`.

llhttp refuses every method it does not know, so those listeners ran uvicorn's pure-Python h11 protocol, a
large share of each request's CPU. This mixin feeds llhttp one message at a time, so that the first bytes of
every request head are known: a method llhttp does not know is handed to it as a stand-in it does know
(`PROPFIND`) and the real one is put back in the request's scope before the application sees it. Only the
method token at the start of a head is ever replaced (the head limits in limits.py count the bytes as they
came); bodies, headers and the target are fed as they arrived.

Where each message ends is taken from llhttp itself: a head is fed up to its blank line, then a
Content-Length body exactly, a chunked one line by line (every chunk line and the last one end in LF), so a
message always completes at the end of a piece and the next byte is the next head's first. Pipelined
requests in one read are therefore split and each one's method seen. A method that is not an RFC 9110 token,
or is longer than 64 bytes, is fed as it came, and llhttp refuses it (400).
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from typing import Any

import httptools

STAND_IN = b"PROPFIND"
# the methods llhttp parses as themselves (its request methods); CONNECT and PRI are left to it
KNOWN = frozenset(
    b"DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND REBIND "
    b"UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR "
    b"LINK UNLINK SOURCE QUERY CONNECT PRI".split()
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_MAX_METHOD = 64  # a longer method is fed as it came (llhttp refuses it: 400)


class AnyMethodMixin:
    """For uvicorn's HttpToolsProtocol (after the head limits in the MRO, before uvicorn's class)."""

    transport: asyncio.Transport
    headers: list[tuple[bytes, bytes]]
    scope: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._at_start = True  # the next byte fed begins a message
        self._held = b""  # the start of a head whose method token is not complete yet
        self._in_head = False
        self._tail = b""  # the last bytes of the head so far: its blank line may straddle two reads
        self._chunked = False
        self._body_left = 0  # Content-Length bytes still to feed
        self._method: str | None = None  # this message's real method, when a stand-in was fed

    def data_received(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        feed = super().data_received  # type: ignore[misc]
        while data and not self.transport.is_closing():
            if self._at_start:
                data = data.lstrip(b"\r\n")  # empty lines before a request line are skipped (as h11 does)
                space = data.find(b" ")
                if not data or (space < 0 and len(data) <= _MAX_METHOD):
                    self._held = data  # the method token so far: bounded by _MAX_METHOD
                    return
                method = data[:space] if space >= 0 else b""
                self._method = None
                if method and len(method) <= _MAX_METHOD and method not in KNOWN and _TOKEN.match(method):
                    self._method = method.decode("ascii")
                    data = STAND_IN + data[space:]
                self._at_start, self._in_head, self._tail = False, True, b""
            if self._in_head:
                buf = self._tail + data
                end = buf.find(b"\r\n\r\n")
                cut = len(data) if end < 0 else end + 4 - len(self._tail)
                self._tail = buf[-3:]
            elif self._chunked:
                nl = data.find(b"\n")
                cut = len(data) if nl < 0 else nl + 1
            elif self._body_left:
                cut = min(self._body_left, len(data))
                self._body_left -= cut
            else:  # not at a message boundary we track (an upgrade, an error): llhttp has the rest as it is
                feed(data)
                return
            piece, data = data[:cut], data[cut:]
            feed(piece)
        if data and self.transport.get_protocol() is not self:  # an upgrade took the connection over
            self.transport.get_protocol().data_received(data)  # type: ignore[attr-defined]

    def on_headers_complete(self) -> None:
        self._in_head = False
        transfer = length = None
        transfers = hosts = 0
        for name, value in self.headers:
            if name == b"transfer-encoding":
                transfer, transfers = value, transfers + 1
            elif name == b"content-length":
                length = value
            elif name == b"host":
                hosts += 1
        # what h11 refuses and llhttp takes (a 400 from uvicorn, as h11's refusals were): a Transfer-Encoding other
        # than `chunked` alone (llhttp reads `gzip, chunked` as chunked: a smuggling shape), no Host in HTTP/1.1
        if transfer is not None and (transfers > 1 or transfer.strip().lower() != b"chunked"):
            raise httptools.HttpParserError("Transfer-Encoding other than chunked")
        if not hosts and self.parser.get_http_version() == "1.1":  # type: ignore[attr-defined]
            raise httptools.HttpParserError("no Host header")
        self._chunked = transfer is not None
        self._body_left = int(length) if transfer is None and length is not None and length.isdigit() else 0
        super().on_headers_complete()  # type: ignore[misc]
        if self._method is not None:
            self.scope["method"] = self._method  # the app runs later: it sees the method that was sent
        url: bytes = self.url  # type: ignore[attr-defined]
        if url[:1] != b"/" and "path" in self.scope:
            # an absolute-form (or asterisk) target: uvicorn's httptools protocol keeps only the URL's path and
            # drops its scheme and host; h11 gives the target as it came, and the apps decide (the CMG refuses it)
            raw_path, _, query = url.partition(b"?")
            self.scope["raw_path"], self.scope["query_string"] = raw_path, query
            self.scope["path"] = urllib.parse.unquote(raw_path.decode("ascii"))

    def on_message_complete(self) -> None:
        self._at_start, self._chunked, self._body_left = True, False, 0
        super().on_message_complete()  # type: ignore[misc]
