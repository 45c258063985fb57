"""The MP's lean path (cmglab/runtime/fastpath.py) answers its routes exactly as the FastAPI
app would: the same reply (status, body, headers) for a success, each of the MP's typed errors, Starlette's
HTTPException and an unhandled exception (plain 500), the same request record, the same fault rules. The live
routes behind it are covered over real sockets by tests/test_mp_*.py."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException

from cmglab.runtime.admin import FaultRule, LabMiddleware, LabState, record
from cmglab.runtime.fastpath import LeanRoutes
from cmglab.runtime.limits import Limits, limit_body
from cmglab.services.management_point.errors import FORBIDDEN, HTTPError, IISError, STSError, install_error_handler
from cmglab.wire.kinds import AuthKind

PATH = "/ccm_system_tokenauth/request"


async def handler(request: Request) -> Response:
    what = request.headers.get("x-what", "ok")
    body = await request.body()
    if what == "iis":
        raise IISError(403, FORBIDDEN, result="refused: probe")
    if what == "http":
        raise HTTPError(401, "a CCM token is required", headers={"WWW-Authenticate": "Bearer"})
    if what == "sts":
        raise STSError(401, "InvalidToken", "expired")
    if what == "starlette":
        raise HTTPException(404, "no such thing")
    if what == "boom":
        raise RuntimeError("a bug")
    record(request).authenticated(AuthKind.CCM_TOKEN, "GUID:1")
    return Response(b"echo:" + body, media_type="application/octet-stream")


def make_app() -> tuple[FastAPI, LabState]:
    app = FastAPI()
    state = LabState("management-point", 100)
    app.add_api_route(PATH, handler, methods=["CCM_POST"])
    app.add_middleware(LabMiddleware, state=state)
    app.state.lab = state
    app.state.lean_routes = {("CCM_POST", PATH): handler}
    install_error_handler(app)
    return app, state


async def exchange(app: Any, what: str) -> tuple[httpx.Response, dict[str, Any]]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://mp.lab") as c:
        resp = await c.request("CCM_POST", PATH, content=b"payload", headers={"x-what": what})
    return resp, app


def run(app: Any, state: LabState, what: str) -> tuple[int, bytes, dict[str, str], dict[str, Any]]:
    resp, _ = asyncio.run(exchange(app, what))
    rec = state.requests[0].as_dict()
    for varying in ("seq", "time", "started", "elapsed_ms", "trace_id", "span_id", "traceparent"):
        rec.pop(varying, None)
    return resp.status_code, resp.content, dict(resp.headers), rec


@pytest.mark.parametrize("what", ["ok", "iis", "http", "sts", "starlette", "boom"])
def test_same_reply_and_record_as_fastapi(what: str) -> None:
    app, state = make_app()
    via_fastapi = run(app, state, what)
    lean_app, lean_state = make_app()
    via_lean = run(LeanRoutes(lean_app), lean_state, what)
    assert via_lean == via_fastapi
    if what == "boom":
        assert via_lean[0] == 500 and via_lean[1] == b"Internal Server Error"


def test_only_its_exact_routes_are_lean() -> None:
    app, _ = make_app()
    lean = LeanRoutes(app)
    calls: list[str] = []
    real = app.__call__

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        calls.append(f"{scope['method']} {scope['path']}")
        await real(scope, receive, send)

    lean.app = spy  # type: ignore[assignment]

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=lean, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="https://mp.lab") as c:
            return [
                (await c.request("CCM_POST", PATH, content=b"x")).status_code,
                (await c.request("POST", PATH, content=b"x")).status_code,  # FastAPI's 405
                (await c.request("CCM_POST", PATH + "/", content=b"x")).status_code,
            ]

    statuses = asyncio.run(go())
    assert statuses[0] == 200 and statuses[1] == 405
    assert calls == [f"POST {PATH}", f"CCM_POST {PATH}/"]


def test_fault_rules_and_body_limit_apply() -> None:
    app, state = make_app()
    state.add_fault(FaultRule(path="tokenauth", status=503))
    status, body, _, rec = run(LeanRoutes(app), state, "ok")
    assert (status, body) == (503, b"fault injected by cmglab\n") and rec["fault"] is not None
    state.faults.clear()
    limited = limit_body(LeanRoutes(app), Limits(max_body_bytes=4))
    resp, _ = asyncio.run(exchange(limited, "ok"))
    assert resp.status_code == 413
