"""The DP's IIS site: the content virtual directories behind IIS's checks, in IIS's order.

1. HTTP.sys and request filtering: the URL (`paths.segments`: 400, 404.11);
2. the site's SSL settings: with "HTTPS" on, the content vdirs require SSL (403.4) and a client
   certificate (403.7), except `NOCERT_SMS_DP_SMSPKG$`;
3. authentication: "Allow clients to connect anonymously" off means Windows authentication
   (Negotiate, NTLM; connection-based) for every request (401);
4. the handler: GET/HEAD only (405), the content (404), ranges (206, 416).
Every request, answered or refused, is a line in the IIS log.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cmglab.runtime.admin import install_lab_admin, record
from cmglab.runtime.certinfo import client_cert
from cmglab.services.distribution_point import listing, ranges
from cmglab.services.distribution_point.errors import SERVER, IISError, install_error_handler, not_found, observe
from cmglab.services.distribution_point.parts import Parts
from cmglab.services.distribution_point.paths import segments
from cmglab.services.distribution_point.vdirs import VDIRS, ContentView, File, Listing, Result, Text
from cmglab.wire.kinds import AuthKind

_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:\d{1,5})?$")
_CHUNK = 1 << 16
MAX_FIELD_LENGTH = 16384  # HTTP.sys MaxFieldLength: a longer header line is 400 before IIS sees it
# IIS log sc-win32-status for the authentication legs
_WIN32_ACCESS_DENIED, _WIN32_LOGON_FAILURE, _SEC_I_CONTINUE_NEEDED = 5, 1326, 2148074254


class AnyMethod:
    """A request handler as a plain ASGI app: IIS takes every verb and answers 405 itself."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def _file_response(path: Path, request: Request) -> Response:
    st = path.stat()
    size = st.st_size
    span = ranges.parse(request.headers.get("range"), size)
    first, last = span if span else (0, size - 1)
    length = max(0, last - first + 1)
    headers = {
        "Accept-Ranges": "bytes",
        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
        "ETag": f'"{st.st_mtime_ns:x}:{size:x}"',
        "Content-Length": str(length),
        "Server": SERVER,
    }
    if span:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"

    async def body() -> AsyncIterator[bytes]:
        if request.method == "HEAD" or length == 0:
            return
        with path.open("rb") as f:
            f.seek(first)
            left = length
            while left > 0:
                block = await run_in_threadpool(f.read, min(_CHUNK, left))
                if not block:
                    break
                left -= len(block)
                yield block

    return StreamingResponse(
        body(), status_code=206 if span else 200, headers=headers, media_type="application/octet-stream"
    )


def create_app(parts: Parts) -> FastAPI:
    lab = parts.lab
    app = FastAPI(title="cmglab distribution point", docs_url=None, redoc_url=None, openapi_url=None)
    install_lab_admin(app, service="distribution-point", lab=lab)
    view = ContentView(parts.library)
    default_host = lab.config.hosts.distribution_point

    def link_base(request: Request) -> tuple[str, str]:
        host = request.headers.get("host", "")
        if not _HOST.match(host):
            host = default_host
        return host.split(":")[0], f"http://{host}"

    async def authenticate(request: Request) -> tuple[str, list[tuple[str, str]]]:
        step = await parts.auth.login(request)
        if not step.done:
            if step.error:
                raise IISError(401, step.error, substatus=1, headers=step.headers)
            if request.headers.get("authorization"):
                raise IISError(401, "NTLM handshake continues", substatus=1, headers=step.headers)
            raise IISError(401, "anonymous access is not allowed", substatus=2, headers=step.headers)
        assert step.account is not None
        return step.account, step.headers

    def render(result: Result, request: Request) -> Response:
        if isinstance(result, File):
            return _file_response(result.path, request)
        if isinstance(result, Text):
            body = b"" if request.method == "HEAD" else result.body
            resp = Response(body, media_type=result.media_type, headers={"Server": SERVER})
            resp.headers["Content-Length"] = str(len(result.body))
            return resp
        assert isinstance(result, Listing)
        host, base = link_base(request)
        html = listing.render(host, base, result.path, result.entries)
        # HEAD of a folder: no length (tools tell folders from files by it)
        return Response(
            b"" if request.method == "HEAD" else html, media_type="text/html; charset=utf-8", headers={"Server": SERVER}
        )

    async def handle(request: Request) -> Response:
        started = time.monotonic()
        scheme = request.scope.get("scheme", "http")
        rec = record(request)
        user: str | None = None
        win32 = 0
        try:
            if any(len(k) + len(v) + 2 > MAX_FIELD_LENGTH for k, v in request.scope.get("headers", [])):
                raise IISError(400, "a header line over HTTP.sys's MaxFieldLength")
            parts_ = segments(request.scope.get("raw_path") or request.url.path.encode())
            if not parts_ or parts_[0].lower() not in VDIRS:
                raise not_found("/" + "/".join(parts_))
            vdir = parts_[0].lower()
            site = parts.site()
            if site.https and scheme != "https":
                raise IISError(403, "the content vdirs require SSL", substatus=4)
            if site.https and vdir != "nocert_sms_dp_smspkg$" and client_cert(request) is None:
                raise IISError(403, "no client certificate", substatus=7)
            final: list[tuple[str, str]] = []
            if not site.allow_anonymous:
                user, final = await authenticate(request)
                rec.authenticated(AuthKind.WINDOWS, user)
            else:
                rec.auth_kind = AuthKind.ANONYMOUS
            if request.method not in ("GET", "HEAD"):
                raise IISError(405, f"verb {request.method}")
            result = await run_in_threadpool(view.resolve, parts_)
            response = render(result, request)
            for name, value in final:
                response.headers.append(name, value)
        except IISError as e:
            if e.status == 401:
                win32 = {
                    1: _SEC_I_CONTINUE_NEEDED if "continues" in e.reason else _WIN32_LOGON_FAILURE,
                    2: _WIN32_ACCESS_DENIED,
                }.get(e.substatus, 0)
            observe(request, e)
            response = e.response(request)
            substatus = e.substatus
        else:
            substatus = 0
        server = request.scope.get("server") or ("-", 0)
        parts.iislog.write(
            server_ip=str(server[0]),
            method=request.method,
            stem=request.url.path,
            query=request.url.query,
            port=int(server[1] or 0),
            user=user,
            client_ip=request.client.host if request.client else "-",
            user_agent=request.headers.get("user-agent"),
            referer=request.headers.get("referer"),
            status=response.status_code,
            substatus=substatus,
            win32=win32,
            millis=int((time.monotonic() - started) * 1000),
        )
        return response

    app.router.routes.append(Route("/{path:path}", AnyMethod(handle), include_in_schema=False))
    # Starlette's `{path:path}` stops at a decoded newline: such a path would get FastAPI's JSON 404 and no
    # IIS log line (a probe the log never shows); every HTTP request not routed above is IIS's to answer
    fallback = app.router.default

    async def unrouted(scope: Any, receive: Any, send: Any) -> None:
        await (AnyMethod(handle) if scope["type"] == "http" else fallback)(scope, receive, send)

    app.router.default = unrouted
    install_error_handler(app)
    return app
