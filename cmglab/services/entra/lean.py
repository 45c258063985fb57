"""Entra's lean routes (cmglab/runtime/fastpath.py): the token endpoints, the DRS join and the onboarding's
discovery reads, its busiest requests, answered by the very handlers of their FastAPI routes (routes_token.py,
routes_drs.py, routes_oidc.py) on the same paths, past FastAPI's routing and dependency layers."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from cmglab.runtime.fastpath import Handler, LeanTable
from cmglab.services.entra.parts import Parts, off_loop
from cmglab.services.entra.routes_drs import discover_handler, join_handler
from cmglab.services.entra.routes_oidc import openid_v1_handler, userrealm_handler
from cmglab.services.entra.routes_token import token_handler


def _in_thread(work: Callable[[str, Request], Response], param: str) -> Handler:
    """WORK (a store read) on a worker thread, as FastAPI runs the sync route, given its path parameter."""

    async def answer(request: Request) -> Response:
        return await off_loop(work, request.path_params[param], request)

    return answer


def lean_routes(parts: Parts) -> LeanTable:
    """(method, path as the FastAPI route declares it) -> handler."""
    token, join, discover = token_handler(parts), join_handler(parts), discover_handler(parts)

    async def token_v1(request: Request) -> Response:
        return await token(request, request.path_params["tenant"], False)

    async def token_v2(request: Request) -> Response:
        return await token(request, request.path_params["tenant"], True)

    openid = _in_thread(openid_v1_handler(parts), "tenant")
    userrealm = _in_thread(userrealm_handler(parts), "upn")
    discovery = _in_thread(lambda tenant, request: JSONResponse(discover(tenant, request)), "tenant")
    return {
        ("POST", "/{tenant}/oauth2/token"): token_v1,
        ("POST", "/{tenant}/oauth2/v2.0/token"): token_v2,
        ("POST", "/EnrollmentServer/device/"): join,
        ("POST", "/EnrollmentServer/device"): join,
        ("GET", "/{tenant}/.well-known/openid-configuration"): openid,
        ("GET", "/common/userrealm/{upn}"): userrealm,
        ("GET", "/common/UserRealm/{upn}"): userrealm,
        ("GET", "/{tenant}/discover"): discovery,
        ("GET", "/{tenant}/Discover"): discovery,
    }
