"""Device Registration Service endpoints (enterpriseregistration.windows.net)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from cmglab.runtime.admin import record
from cmglab.runtime.certinfo import client_cert
from cmglab.services.entra.grants import NONCE_LIFETIME
from cmglab.services.entra.parts import Parts, off_loop
from cmglab.wire.kinds import AuthKind


def join_handler(entra: Parts) -> Callable[[Request], Awaitable[Response]]:
    """`POST /EnrollmentServer/device/`: the one handler behind the FastAPI routes and the lean path (lean.py)."""

    async def join(request: Request) -> Response:
        body = await request.body()
        reply = await off_loop(entra.registration.join, request.headers.get("authorization"), body)
        record(request).update(auth_kind=AuthKind.DRS_JOIN, auth_subject=reply.get("User", {}).get("Upn"))
        return JSONResponse(reply, status_code=201)

    return join


def discover_handler(entra: Parts) -> Callable[[str, Request], dict[str, Any]]:
    """`GET /<tenant>/discover` (a worker thread: it reads the store): the one handler behind the FastAPI routes
    and the lean path (lean.py)."""

    def discover(tenant: str, request: Request) -> dict[str, Any]:
        drs_url, login_url = entra.drs_and_login_urls(request)
        return entra.registration.discover(tenant, drs_url=drs_url, login_url=login_url)

    return discover


def router(entra: Parts) -> APIRouter:
    r = APIRouter()
    join_device = join_handler(entra)
    discover = discover_handler(entra)
    r.get("/{tenant}/discover")(discover)
    r.get("/{tenant}/Discover")(discover)

    @r.get("/EnrollmentServer/nonce/{tenant}/")
    def nonce(tenant: str) -> dict[str, Any]:
        return entra.registration.nonce(tenant, NONCE_LIFETIME)

    @r.post("/EnrollmentServer/device/")
    @r.post("/EnrollmentServer/device")
    async def join(request: Request) -> Response:
        return await join_device(request)

    @r.put("/EnrollmentServer/device/{device_id}")
    async def hybrid_join(device_id: str, request: Request) -> JSONResponse:
        body = await request.body()
        reply = await run_in_threadpool(entra.registration.hybrid_join, device_id, body)
        record(request).update(auth_kind=AuthKind.DRS_HYBRID_JOIN, auth_subject=device_id)
        return JSONResponse(reply)

    @r.delete("/EnrollmentServer/device/{device_id}")
    def delete(device_id: str, request: Request) -> dict[str, Any]:
        reply = entra.registration.delete(device_id, client_cert(request))
        record(request).update(auth_kind=AuthKind.DEVICE_CERTIFICATE, auth_subject=device_id)
        return reply

    return r
