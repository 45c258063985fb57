"""The authorize endpoint, for single sign-on with a PRT cookie ([MS-OAPXBC] 3.1.5.2.1.3): a request carrying
`x-ms-RefreshTokenCredential` (cookie or header) is answered with a redirect to the client's redirect URI
with an authorization code; without a valid one the lab shows the sign-in page with the reason (the lab has
no interactive sign-in here: the device code page is its browser sign-in)."""

from __future__ import annotations

import html
import logging
import uuid
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from cmglab.runtime.admin import record
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.parts import Parts
from cmglab.wire.kinds import AuthKind

log = logging.getLogger("cmglab.entra")
PRT_COOKIE = "x-ms-RefreshTokenCredential"
SIGN_IN_PAGE = """<!doctype html><html><head><title>Sign in to your account</title></head><body>
<h1>Sign in</h1><p>{message}</p></body></html>"""
# native and broker clients' redirect URIs (the lab registers no others for its public clients)
NATIVE_REDIRECTS = ("urn:ietf:wg:oauth:2.0:oob", "ms-appx-web://microsoft.aad.brokerplugin/")


def redirect_allowed(uri: str, login_hosts: list[str]) -> bool:
    """A registered native redirect URI, matched as Entra matches (the whole URI, not a prefix of it). A URI
    with user information, a backslash or whitespace is refused outright: browsers and urlsplit disagree on
    where its host is (`http://evil.example\\@localhost/` is evil.example to a browser)."""
    low = uri.lower()
    if low == NATIVE_REDIRECTS[0] or low.startswith(NATIVE_REDIRECTS[1]):
        return True
    if "\\" in uri or any(c.isspace() or ord(c) < 0x20 for c in uri):
        return False
    parts = urlsplit(low)
    if parts.username is not None or parts.password is not None:
        return False
    if parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1"):
        return True
    return parts.scheme == "https" and parts.hostname in login_hosts and parts.path == "/common/oauth2/nativeclient"


def router(entra: Parts) -> APIRouter:
    r = APIRouter()

    async def authorize(request: Request, tenant: str) -> Response:
        q = request.query_params
        client_id, redirect_uri = q.get("client_id", ""), q.get("redirect_uri", "")
        cookie = request.cookies.get(PRT_COOKIE) or request.headers.get(PRT_COOKIE)
        try:
            if not client_id:
                raise AADSTSError(
                    900144, "invalid_request", "The request body must contain the following parameter: 'client_id'."
                )
            if not redirect_allowed(redirect_uri, [h.lower() for h in entra.lab_hosts]):
                raise AADSTSError(
                    50011,
                    "invalid_request",
                    f"The redirect URI '{redirect_uri}' specified in the request does not match the "
                    f"redirect URIs configured for the application '{client_id}'.",
                )
            if not cookie:
                raise AADSTSError(
                    50058, "interaction_required", "A silent sign-in request was sent but no user is signed in."
                )
            code, use = await run_in_threadpool(entra.grants.prts.authorize, cookie, tenant, client_id, redirect_uri)
        except AADSTSError as e:
            log.info("GET %s -> 200 sign-in page: %s", request.url.path, e)
            record(request).update(auth_kind=AuthKind.PRT_COOKIE, result=f"AADSTS{e.code}")
            return HTMLResponse(SIGN_IN_PAGE.format(message=html.escape(f"AADSTS{e.code}: {e.message}")))
        record(request).update(auth_kind=AuthKind.PRT_COOKIE, auth_subject=use.user.upn, device_id=use.row.device_id)
        params = {"code": code, "session_state": str(uuid.uuid4())}
        if q.get("state"):
            params["state"] = q["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(f"{redirect_uri}{sep}{urlencode(params)}", status_code=302)

    @r.get("/{tenant}/oauth2/authorize")
    async def authorize_v1(tenant: str, request: Request) -> Response:
        return await authorize(request, tenant)

    @r.get("/{tenant}/oauth2/v2.0/authorize")
    async def authorize_v2(tenant: str, request: Request) -> Response:
        return await authorize(request, tenant)

    return r
