"""Token endpoints (v1 and v2), device authorization endpoints and the device login page."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from cmglab.runtime.admin import record
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.grants import TokenRequest
from cmglab.services.entra.parts import Parts, base_url, off_loop
from cmglab.wire.kinds import AuthKind

NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
LOGIN_FORM = """<!doctype html><html><head><title>Enter code</title></head><body>
<h1>Enter code</h1><p>{message}</p>
<form method="post" action="/devicelogin">
<label>Code <input name="otc" autocomplete="off"></label><br>
<label>Username <input name="login" type="email"></label><br>
<label>Password <input name="passwd" type="password"></label><br>
<button type="submit">Sign in</button></form></body></html>"""


async def form_of(request: Request) -> dict[str, str]:
    """The urlencoded body (the token endpoints take nothing else)."""
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))


TokenHandler = Callable[[Request, str, bool], Awaitable[Response]]


def token_handler(entra: Parts) -> TokenHandler:
    """`POST /<tenant>/oauth2[/v2.0]/token`: the one handler behind the FastAPI routes and the lean path
    (cmglab/runtime/fastpath.py, lean.py)."""

    async def token(request: Request, tenant: str, v2: bool) -> Response:
        req = TokenRequest(tenant, v2, await form_of(request), request.client.host if request.client else None)
        result = await off_loop(entra.grants.token, req)
        rec = record(request)
        rec.update(auth_kind=result.auth_kind, auth_subject=result.auth_subject, **result.extra)
        if result.jwe is not None:  # a reply to a PRT-signed request: a JWE under the session key
            return Response(result.jwe, media_type="application/jose", headers=NO_STORE)
        return JSONResponse(result.body, headers=NO_STORE)

    return token


def router(entra: Parts) -> APIRouter:
    r = APIRouter()
    token = token_handler(entra)

    @r.post("/{tenant}/oauth2/token")
    async def token_v1(tenant: str, request: Request) -> Response:
        return await token(request, tenant, False)

    @r.post("/{tenant}/oauth2/v2.0/token")
    async def token_v2(tenant: str, request: Request) -> Response:
        return await token(request, tenant, True)

    async def devicecode(request: Request, tenant: str, v2: bool) -> JSONResponse:
        form = await form_of(request)
        body = await run_in_threadpool(
            entra.device_codes.start, tenant, form, v2=v2, verification_url=f"{base_url(request)}/devicelogin"
        )
        return JSONResponse(body, headers=NO_STORE)

    @r.post("/{tenant}/oauth2/devicecode")
    async def devicecode_v1(tenant: str, request: Request) -> JSONResponse:
        return await devicecode(request, tenant, v2=False)

    @r.post("/{tenant}/oauth2/v2.0/devicecode")
    async def devicecode_v2(tenant: str, request: Request) -> JSONResponse:
        return await devicecode(request, tenant, v2=True)

    @r.get("/devicelogin")
    async def devicelogin_page() -> HTMLResponse:
        return HTMLResponse(LOGIN_FORM.format(message="Enter the code displayed on your device, then sign in."))

    @r.post("/devicelogin")
    async def devicelogin(request: Request) -> HTMLResponse:
        form = await form_of(request)
        try:
            upn = await run_in_threadpool(
                entra.device_codes.sign_in, form.get("otc", ""), form.get("login", ""), form.get("passwd", "")
            )
        except AADSTSError as e:
            return HTMLResponse(LOGIN_FORM.format(message=html.escape(f"AADSTS{e.code}: {e.message}")), 400)
        record(request).update(auth_kind=AuthKind.DEVICE_LOGIN, auth_subject=upn)
        return HTMLResponse(f"<!doctype html><p>{html.escape(upn)} signed in. You can close this window.</p>")

    return r
