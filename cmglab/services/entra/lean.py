"""Entra's lean path (cmglab/runtime/fastpath.py): the token endpoints and the DRS join, its busiest requests,
answered by the very handlers of their FastAPI routes (routes_token.py, routes_drs.py) under the same lab
middleware and the app's Entra error handler, without FastAPI's routing and dependency layers. No earlier route
of the app takes these paths (the /_lab/ routes are GETs or other paths), so the same handler answers either way;
any other method or path goes to the FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from cmglab.runtime.fastpath import Handler, LeanRoutes
from cmglab.services.entra.parts import Parts
from cmglab.services.entra.routes_drs import join_handler
from cmglab.services.entra.routes_token import TokenHandler, token_handler


def lean_routes(parts: Parts) -> dict[tuple[str, str], Handler]:
    """The exact routes (the DRS join, with and without its trailing slash as the FastAPI routes)."""
    join = join_handler(parts)
    return {("POST", "/EnrollmentServer/device/"): join, ("POST", "/EnrollmentServer/device"): join}


class EntraLeanRoutes(LeanRoutes):
    """Also `POST /<tenant>/oauth2/token` and `/<tenant>/oauth2/v2.0/token` (a non-empty tenant segment, as the
    FastAPI route's `{tenant}`)."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app)
        self.token: TokenHandler = token_handler(app.state.parts)

        async def v1(request: Request) -> Response:
            return await self.token(request, request.scope["path"].split("/")[1], False)

        async def v2(request: Request) -> Response:
            return await self.token(request, request.scope["path"].split("/")[1], True)

        self.v1, self.v2 = v1, v2

    def handler(self, method: str, path: str) -> Handler | None:
        if method == "POST" and path.endswith("/token"):
            parts = path.split("/")
            if len(parts) == 4 and parts[1] and parts[2] == "oauth2":
                return self.v1
            if len(parts) == 5 and parts[1] and parts[2] == "oauth2" and parts[3] == "v2.0":
                return self.v2
        return super().handler(method, path)
