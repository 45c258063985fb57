"""httptools (llhttp) for listeners that must take any method token, such as CcmMessaging's `CCM_POST`.

llhttp refuses every method it does not know, so those listeners ran uvicorn's pure-Python h11 protocol, a
large share of each request's CPU. This mixin feeds llhttp one message at a time, so that the first bytes of
every request head are known: a method llhttp does not know is handed to it as a stand-in it does know
(`PROPFIND`) and the real one is put back in the request's scope before the application sees it. Only the
method token at the start of a head is ever replaced (the head limits in limits.py count the bytes as they
came); bodies, headers and the target are fed as they arrived.

Where each message ends is the framing's, and llhttp must agree: a head is fed up to its blank line, then a
Content-Length body exactly (the value must be one strict digit string, as llhttp and we then read the same
length), a chunked one by its chunk sizes (each size line, then that many bytes of data in one piece whatever
they hold, the CRLF, the trailer lines bounded as a head is). llhttp must begin a message only where a head is fed
and complete one only at the end of the piece the framing says ends it; otherwise the connection is refused (400)
or closed. Pipelined requests in one read are therefore split and each one's method seen. A request with
`Upgrade` (or CONNECT) is refused (400, closed): these listeners take no upgrade, and llhttp would stop at its
head and read its body as the next request. A method that is not an RFC 9110 token, or is longer than 64 bytes,
is fed as it came, and llhttp refuses it (400).
"""

from __future__ import annotations

import asyncio
import logging
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
_NOT_CRLF = re.compile(rb"[^\r\n]")
_DIGITS = re.compile(rb"[0-9]+\Z")
# a chunk-size line: hex size (llhttp's own bound is 64 bits), optional extensions, CRLF
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(;[^\r\n]*)?\r\n\Z")
_MAX_CHUNK_LINE = 4096
log = logging.getLogger("cmglab.runtime")


class AnyMethodMixin:
    """For uvicorn's HttpToolsProtocol (after the head limits in the MRO, before uvicorn's class)."""

    transport: asyncio.Transport
    headers: list[tuple[bytes, bytes]]
    scope: Any
    limits: Any  # the head limits' (limits.py): a trailer is bounded as a head is

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._at_start = True  # the next byte fed begins a message
        self._held = b""  # the start of a head whose method token is not complete yet
        self._in_head = False
        self._tail = b""  # the last bytes of the head so far: its blank line may straddle two reads
        self._chunk: str | None = None  # chunked body: "size" line, "data", "crlf" after data, "trailer" lines
        self._chunk_left = 0  # bytes of this chunk's data still to feed
        self._line = b""  # a chunk-size line so far
        self._trailer_bytes = 0
        self._body_left = 0  # Content-Length bytes still to feed
        self._method: str | None = None  # this message's real method, when a stand-in was fed
        self._end_expected = False  # the piece being fed ends the message (by our framing)
        self._ended = False  # llhttp completed a message in the piece being fed

    def _feed(self, piece: bytes) -> None:
        """Feeds PIECE; llhttp must complete a message at its end exactly when our framing says it ends there."""
        self._ended = False
        super().data_received(piece)  # type: ignore[misc]
        if not self.transport.is_closing() and self._ended != self._end_expected:
            log.warning("any-method: llhttp and the framing disagree on where a message ends: closing")
            self.transport.close()
        self._end_expected = False

    def data_received(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        pos, end = 0, len(data)  # an offset, not slices of the rest: many small messages cost linear time
        while pos < end and not self.transport.is_closing():
            if self._at_start:
                first = _NOT_CRLF.search(data, pos)  # empty lines before a request line are skipped (as h11 does)
                if first is None:
                    return
                pos = first.start()
                space = data.find(b" ", pos, pos + _MAX_METHOD + 1)
                if space < 0 and end - pos <= _MAX_METHOD:
                    self._held = data[pos:]  # the method token so far: bounded by _MAX_METHOD
                    return
                method = data[pos:space] if space >= 0 else b""
                self._method = None
                self._at_start, self._in_head, self._tail = False, True, b""
                if method and len(method) <= _MAX_METHOD and method not in KNOWN and _TOKEN.match(method):
                    self._method = method.decode("ascii")
                    self._feed(STAND_IN)
                    pos = space
                    continue
            if self._in_head:
                found = (self._tail + data[pos : pos + 3]).find(b"\r\n\r\n")
                if found >= 0:
                    cut = pos + found + 4 - len(self._tail)
                else:
                    blank = data.find(b"\r\n\r\n", pos)
                    cut = end if blank < 0 else blank + 4
                self._tail = (self._tail + data[max(pos, cut - 3) : cut])[-3:]
            elif self._chunk == "data":
                cut = pos + min(self._chunk_left, end - pos)  # chunk data in one piece, whatever it holds
                self._chunk_left -= cut - pos
                if not self._chunk_left:
                    self._chunk = "crlf"
            elif self._chunk is not None:  # a size line, the CRLF after data, a trailer line: up to its LF
                nl = data.find(b"\n", pos)
                cut = end if nl < 0 else nl + 1
                if not self._chunk_line(data[pos:cut], complete=nl >= 0):
                    return
            elif self._body_left:
                cut = pos + min(self._body_left, end - pos)
                self._body_left -= cut - pos
                self._end_expected = not self._body_left
            else:  # llhttp is past a message we did not frame (it cannot be: refused in on_headers_complete)
                self.transport.close()
                return
            piece, pos = data[pos:cut], cut
            self._feed(piece)

    def _chunk_line(self, part: bytes, complete: bool) -> bool:
        """Tracks a chunked body's lines (PART is one, or its start); False when the request was refused."""
        if self._chunk == "trailer":
            self._trailer_bytes += len(part)
            if self._trailer_bytes > self.limits.max_header_bytes:
                return self._refuse_framing("chunked trailer too large")
            if complete:
                line, self._line = self._line + part, b""
                self._end_expected = line in (b"\r\n", b"\n")  # the blank line ends the message
            else:
                self._line = (self._line + part)[-2:]
            return True
        self._line += part
        if len(self._line) > _MAX_CHUNK_LINE:
            return self._refuse_framing("chunk-size line too long")
        if not complete:
            return True
        line, self._line = self._line, b""
        if self._chunk == "crlf":
            self._chunk = "size"  # llhttp refuses anything but CRLF here
            return True
        size = _CHUNK_SIZE.match(line)
        if size is None:
            return self._refuse_framing("bad chunk-size line")
        self._chunk_left = int(size.group(1), 16)
        self._chunk = "data" if self._chunk_left else "trailer"
        return True

    def _refuse_framing(self, detail: str) -> bool:
        self.send_400_response(detail)  # type: ignore[attr-defined]
        return False

    def on_message_begin(self) -> None:
        if not self._in_head:  # llhttp begins a message where our framing has body bytes
            raise httptools.HttpParserError("message boundary out of step")
        super().on_message_begin()  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._in_head = False
        transfer = length = None
        transfers = hosts = lengths = 0
        for name, value in self.headers:
            if name == b"transfer-encoding":
                transfer, transfers = value, transfers + 1
            elif name == b"content-length":
                length, lengths = value, lengths + 1
            elif name == b"host":
                hosts += 1
            elif name == b"upgrade":
                # these listeners serve no WebSocket: llhttp would stop at the head and the body be read as the
                # next request (h11 read it as the body); refused, as is CONNECT (llhttp's other upgrade)
                raise httptools.HttpParserError("Upgrade on a listener that takes none")
        if self.parser.get_method() == b"CONNECT":  # type: ignore[attr-defined]
            raise httptools.HttpParserError("CONNECT on a listener that takes none")
        # what h11 refuses and llhttp takes (a 400 from uvicorn, as h11's refusals were): a Transfer-Encoding other
        # than `chunked` alone (llhttp reads `gzip, chunked` as chunked: a smuggling shape), no Host in HTTP/1.1
        if transfer is not None and (transfers > 1 or transfer.strip().lower() != b"chunked"):
            raise httptools.HttpParserError("Transfer-Encoding other than chunked")
        # a Content-Length exactly as digits, once: our framing and llhttp's read the same length (`3 ` would not)
        if length is not None and (lengths > 1 or not _DIGITS.match(length)):
            raise httptools.HttpParserError("Content-Length not a digit string")
        if not hosts and self.parser.get_http_version() == "1.1":  # type: ignore[attr-defined]
            raise httptools.HttpParserError("no Host header")
        self._chunk = "size" if transfer is not None else None
        self._line, self._trailer_bytes = b"", 0
        self._body_left = int(length) if transfer is None and length is not None else 0
        self._end_expected = transfer is None and not self._body_left  # a bodyless message ends with its head
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
        if not self._end_expected:  # llhttp ends a message where our framing does not
            raise httptools.HttpParserError("message end out of step")
        self._ended = True
        self._at_start, self._chunk, self._body_left, self._method = True, None, 0, None
        super().on_message_complete()  # type: ignore[misc]
