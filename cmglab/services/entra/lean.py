"""Entra's lean path (cmglab/runtime/fastpath.py): the token endpoints, the DRS join and the onboarding's
discovery reads, its busiest requests,
answered by the very handlers of their FastAPI routes (routes_token.py, routes_drs.py) under the same lab
middleware and the app's Entra error handler, without FastAPI's routing and dependency layers. No earlier route
of the app takes these paths (the /_lab/ routes are GETs or other paths), so the same handler answers either way;
any other method or path goes to the FastAPI app."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cmglab.runtime.fastpath import Handler, LeanRoutes
from cmglab.services.entra.parts import Parts
from cmglab.services.entra.routes_drs import discover_handler, join_handler
from cmglab.services.entra.routes_oidc import openid_v1_handler, userrealm_handler
from cmglab.services.entra.routes_token import TokenHandler, token_handler


def lean_routes(parts: Parts) -> dict[tuple[str, str], Handler]:
    """The exact routes (the DRS join, with and without its trailing slash as the FastAPI routes)."""
    join = join_handler(parts)
    return {("POST", "/EnrollmentServer/device/"): join, ("POST", "/EnrollmentServer/device"): join}


def _in_thread(work: Callable[[str, Request], Response], segment: int) -> Handler:
    """A lean handler running WORK (a store read) in a worker thread, as FastAPI runs a sync route, with the
    path segment its route names."""

    async def answer(request: Request) -> Response:
        return await run_in_threadpool(work, request.scope["path"].split("/")[segment], request)

    return answer


class EntraLeanRoutes(LeanRoutes):
    """Also the routes with a path parameter (a non-empty segment, as the FastAPI routes' `{tenant}`/`{upn}`):
    `POST /<tenant>/oauth2/token` and `/<tenant>/oauth2/v2.0/token`; the onboarding's discovery reads
    `GET /<tenant>/.well-known/openid-configuration`, `/common/userrealm/<upn>` and the DRS `/<tenant>/discover`."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app)
        parts: Parts = app.state.parts
        self.token: TokenHandler = token_handler(parts)

        async def v1(request: Request) -> Response:
            return await self.token(request, request.scope["path"].split("/")[1], False)

        async def v2(request: Request) -> Response:
            return await self.token(request, request.scope["path"].split("/")[1], True)

        discover = discover_handler(parts)
        self.v1, self.v2 = v1, v2
        self.openid = _in_thread(openid_v1_handler(parts), 1)
        self.userrealm = _in_thread(userrealm_handler(parts), 3)
        self.discover = _in_thread(lambda tenant, request: JSONResponse(discover(tenant, request)), 1)

    def handler(self, method: str, path: str) -> Handler | None:
        parts = path.split("/")
        if method == "POST" and path.endswith("/token"):
            if len(parts) == 4 and parts[1] and parts[2] == "oauth2":
                return self.v1
            if len(parts) == 5 and parts[1] and parts[2] == "oauth2" and parts[3] == "v2.0":
                return self.v2
        elif method == "GET" and parts[-1]:
            if len(parts) == 4 and parts[1] and parts[2:] == [".well-known", "openid-configuration"]:
                return self.openid
            if len(parts) == 4 and parts[1] == "common" and parts[2] in ("userrealm", "UserRealm"):
                return self.userrealm
            if len(parts) == 3 and parts[1] and parts[2] in ("discover", "Discover"):
                return self.discover
        return super().handler(method, path)
