"""The lean path's one check (cmglab/runtime/fastpath.py): a request answered by `LeanRoutes` gives the same
status, reply bytes, headers and request record as the same app's FastAPI stack. Used by
tests/test_mp_lean_routes.py, tests/test_cmg_lean_routes.py and tests/test_entra_lean_routes.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from fastapi import FastAPI

from cmglab.runtime.admin import LabState
from cmglab.runtime.fastpath import LeanRoutes

# what two answers to the same request may not share: the record's times and trace IDs
VARYING = ("seq", "time", "started", "elapsed_ms", "trace_id", "span_id", "traceparent")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    record: dict[str, Any]


def exchange(
    app: Any,
    state: LabState,
    method: str,
    path: str,
    *,
    base_url: str,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> Answer:
    """METHOD PATH sent to APP in-process (an unhandled exception is the 500 the server's client would read),
    with the record it left in STATE ({} if none), less what varies between two requests."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            return await client.request(method, path, headers=headers, content=content)

    before = state.last_seq
    reply = asyncio.run(go())
    record = state.requests[0].as_dict() if state.last_seq > before else {}
    for varying in VARYING:
        record.pop(varying, None)
    return Answer(reply.status_code, reply.content, dict(reply.headers), record)


def masked(answer: Answer, patterns: tuple[str, ...]) -> Answer:
    """ANSWER with what the service makes fresh per request (IDs, times, signed tokens) replaced, each match by
    as many `x` (so Content-Length stays comparable)."""
    body = answer.body
    for pattern in patterns:
        body = re.sub(pattern.encode(), lambda m: b"x" * len(m.group()), body)
    return replace(answer, body=body)


def assert_same(
    app: FastAPI,
    method: str,
    path: str,
    *,
    base_url: str,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    fresh: tuple[str, ...] = (),
    wrap: Callable[[Any], Any] = lambda app: app,
) -> Answer:
    """METHOD PATH answered on the lean path (which must take it) as by APP's FastAPI stack; FRESH: patterns of
    the reply body that differ between any two requests; WRAP: what sits outside both (the MP's IISPaths).
    Returns the lean answer."""
    lean = LeanRoutes(app)
    assert lean.handler(method, path) is not None, f"the lean path does not take {method} {path}"
    state: LabState = app.state.lab
    via_app = exchange(wrap(app), state, method, path, base_url=base_url, headers=headers, content=content)
    via_lean = exchange(wrap(lean), state, method, path, base_url=base_url, headers=headers, content=content)
    assert via_app.record, f"{method} {path} was not recorded"
    assert masked(via_lean, fresh) == masked(via_app, fresh)
    return via_lean
