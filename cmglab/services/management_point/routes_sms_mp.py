"""`/SMS_MP*/.sms_aut` (getauth.dll) and `/SMS_MP*/.sms_pol` (getpolicy.dll)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from cmglab.services.management_point import policy as policy_logic
from cmglab.services.management_point.caller import Caller
from cmglab.services.management_point.errors import HTML_ERROR, HTTPError, IISError
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.sms_aut import answer as sms_aut_answer
from cmglab.services.management_point.transport import (
    caller_of,
    off_loop,
    refused_http,
    require_ccm_token,
    windows_logon,
)
from cmglab.wire.ccm_messaging import CcmMessageError

MP_VDIRS = ("sms_mp", "sms_mp_altauth", "sms_mp_tokenauth", "sms_mp_windowsauth")


PolicyHandler = Callable[[Request], Awaitable[Response]]


def policy_handler(mp: Parts, vdir: str) -> PolicyHandler:
    """`GET /<vdir>/.sms_pol`: the one handler behind the FastAPI route and the lean path (fastpath.py)."""

    async def sms_pol(request: Request) -> Response:
        caller = caller_of(request, mp, vdir)
        if (challenge := await authenticate(mp, request, vdir, caller)) is not None:
            return challenge
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = await off_loop(policy_logic.policy_body, mp, request.url.query, headers)
        except LookupError as e:
            mp.logs.policy.warning(f"Policy request for unknown policy {e}")
            raise HTTPError(404, "no such policy") from e
        except (policy_logic.PolicyDenied, CcmMessageError) as e:
            mp.logs.policy.warning(f"Policy request {request.url.query} refused: {e}")
            raise IISError(403, HTML_ERROR, result=f"refused: {e}") from e
        return Response(body.content, media_type=body.media_type)

    return sms_pol


async def authenticate(mp: Parts, request: Request, vdir: str, caller: Caller) -> Response | None:
    """The vdir's IIS authentication: a CCM token, Windows (NTLM/Negotiate) or none."""
    if (refused := await refused_http(request, mp, caller)) is not None:
        return refused
    if vdir == "sms_mp_tokenauth":
        await require_ccm_token(request, mp, caller)
    elif vdir == "sms_mp_windowsauth":
        caller.domain_account, challenge = await windows_logon(mp, request)
        return challenge
    return None


def lean_routes(mp: Parts) -> dict[tuple[str, str], PolicyHandler]:
    """(method, path) -> handler of the policy bodies' GET (HEAD goes to the FastAPI app), as in `router`."""
    return {("GET", f"/{vdir}/.sms_pol"): policy_handler(mp, vdir) for vdir in MP_VDIRS}


def router(mp: Parts) -> APIRouter:
    r = APIRouter()

    for vdir in MP_VDIRS:

        async def sms_aut(request: Request, _vdir: str = vdir) -> Response:
            caller = caller_of(request, mp, _vdir)
            if (challenge := await authenticate(mp, request, _vdir, caller)) is not None:
                return challenge
            result = await run_in_threadpool(sms_aut_answer, mp, request.url.query, caller)
            if result is None:
                return Response("", status_code=404)
            return Response(result.encode("utf-8"), media_type="text/xml; charset=utf-8")

        r.add_api_route(f"/{vdir}/.sms_aut", sms_aut, methods=["GET", "HEAD"], include_in_schema=False)
        r.add_api_route(f"/{vdir}/.sms_pol", policy_handler(mp, vdir), methods=["GET", "HEAD"], include_in_schema=False)
    return r
