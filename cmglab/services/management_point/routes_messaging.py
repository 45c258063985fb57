"""`CCM_POST /ccm_system*/request` (CcmMessaging) and the probes IIS answers on those vdirs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response

from cmglab.runtime.admin import record
from cmglab.services.management_point.errors import CERT_REQUIRED, FORBIDDEN, IISError
from cmglab.services.management_point.messages import dispatch
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.transport import (
    caller_of,
    off_loop,
    read_body,
    refused_http,
    require_token,
    windows_logon,
)

VDIRS = ("ccm_system", "ccm_system_windowsauth", "ccm_system_altauth", "ccm_system_tokenauth")
Handler = Callable[[Request, str], Awaitable[Response]]


def messaging_handler(mp: Parts) -> Handler:
    """`CCM_POST /<vdir>/request`: the one handler behind the FastAPI routes and the lean path (fastpath.py)."""

    async def ccm_post(request: Request, vdir: str) -> Response:
        raw = await read_body(request, mp.lab.settings.max_body_bytes)  # read first: NTLM keeps the connection
        caller = caller_of(request, mp, vdir)
        if (refused := await refused_http(request, mp, caller)) is not None:
            return refused
        if vdir == "ccm_system" and caller.scheme == "https" and caller.pki_cert is None:
            mp.logs.isapi.warning(f"CCM_POST {request.url.path} over HTTPS without a client certificate: 403.7")
            raise IISError(403, CERT_REQUIRED)
        if vdir == "ccm_system_windowsauth":
            account, challenge = await windows_logon(mp, request)
            if challenge is not None:
                return challenge
            caller.domain_account = account
        elif vdir == "ccm_system_tokenauth":
            await require_token(request, mp, caller)
        if not raw:
            return Response(b"", status_code=200)
        reply = await off_loop(dispatch, mp, raw, request.headers.get("content-type"), caller)
        if reply.reason:
            record(request).result = reply.reason
        if reply.status != 200:
            return Response(reply.reason or "", status_code=reply.status, media_type="text/plain")
        return Response(reply.body, status_code=200, media_type=reply.content_type)

    return ccm_post


def lean_routes(mp: Parts) -> dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]:
    """(method, path) -> handler of the exact routes the lean path answers (fastpath.py)."""
    ccm_post = messaging_handler(mp)

    def of(vdir: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await ccm_post(request, vdir)

        return endpoint

    return {("CCM_POST", f"/{vdir}/request"): of(vdir) for vdir in VDIRS}


def router(mp: Parts) -> APIRouter:
    r = APIRouter()
    ccm_post = messaging_handler(mp)

    for vdir in VDIRS:

        async def endpoint(request: Request, _vdir: str = vdir) -> Response:
            return await ccm_post(request, _vdir)

        r.add_api_route(
            f"/{vdir}/request", endpoint, methods=["CCM_POST"], include_in_schema=False, name=f"{vdir}_request"
        )

    @r.api_route("/ccm_system_windowsauth/{rest:path}", methods=["GET", "HEAD", "POST"], include_in_schema=False)
    async def windowsauth_probe(request: Request, rest: str) -> Response:
        _, challenge = await windows_logon(mp, request)
        if challenge is not None:
            return challenge
        raise IISError(403, FORBIDDEN)  # no directory browsing

    @r.api_route("/ccm_system_altauth/{rest:path}", methods=["GET", "HEAD", "POST"], include_in_schema=False)
    @r.api_route("/ccm_system/{rest:path}", methods=["GET", "HEAD", "POST"], include_in_schema=False)
    @r.api_route("/ccm_system_tokenauth/{rest:path}", methods=["GET", "HEAD", "POST"], include_in_schema=False)
    async def forbidden_probe(rest: str) -> Response:
        raise IISError(403, FORBIDDEN)

    return r
