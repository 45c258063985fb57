"""The MP's lean path (cmglab/runtime/fastpath.py) answers its routes exactly as the FastAPI app would
(tests/support/lean.py): the same reply (status, body, headers) for a success, each of the MP's typed errors,
Starlette's HTTPException, an unhandled exception (plain 500) and a typed error once the reply has started, the
same request record, the same fault rules. The live routes behind it are covered over real sockets by
tests/test_mp_*.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from cmglab.runtime.admin import FaultRule, LabMiddleware, LabState, record
from cmglab.runtime.fastpath import ANY, LeanRoutes
from cmglab.runtime.limits import Limits, limit_body
from cmglab.services.management_point.errors import FORBIDDEN, HTTPError, IISError, STSError, install_error_handler
from cmglab.wire.kinds import AuthKind
from tests.support.lean import assert_same, exchange

PATH = "/ccm_system_tokenauth/request"
BASE = "https://mp.lab"


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
    if what == "late":  # a typed error once the reply has started: Starlette's RuntimeError, the reply cut

        async def cut() -> AsyncIterator[bytes]:
            yield b"part"
            raise IISError(403, FORBIDDEN)

        return StreamingResponse(cut())
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


@pytest.mark.parametrize("what", ["ok", "iis", "http", "sts", "starlette", "boom", "late"])
def test_same_reply_and_record_as_fastapi(what: str) -> None:
    app, _ = make_app()
    lean = assert_same(app, "CCM_POST", PATH, base_url=BASE, headers={"x-what": what}, content=b"payload")
    if what == "boom":
        assert lean.status == 500 and lean.body == b"Internal Server Error"
    if what == "late":
        assert lean.record["error"].startswith("RuntimeError: Caught handled exception")


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
    faulted = exchange(LeanRoutes(app), state, "CCM_POST", PATH, base_url=BASE, content=b"payload")
    assert (faulted.status, faulted.body) == (503, b"fault injected by cmglab\n") and faulted.record["fault"]
    state.faults.clear()
    limited = limit_body(LeanRoutes(app), Limits(max_body_bytes=4))
    resp = exchange(limited, state, "CCM_POST", PATH, base_url=BASE, headers={"x-what": "ok"}, content=b"payload")
    assert resp.status == 413


def test_path_parameters_are_matched_and_converted_as_by_the_route() -> None:
    app, _ = make_app()
    app.state.lean_routes = {
        ("GET", "/items/{n:int}"): handler,
        ("GET", "/{tenant}/x"): handler,
        (ANY, "/{p:path}"): handler,
    }
    lean = LeanRoutes(app)
    assert lean.match("GET", "/items/7") == (handler, {"n": 7})  # int, as Starlette's convertor gives the route
    assert lean.match("GET", "/t1/x") == (handler, {"tenant": "t1"})
    assert lean.match("POST", "/t1/x") == (handler, {"p": "t1/x"})  # ANY takes every method, in the table's order
    assert lean.match("GET", "/items/y") == (handler, {"p": "items/y"})  # not an int
    assert lean.match("GET", "/_lab/health") is None
