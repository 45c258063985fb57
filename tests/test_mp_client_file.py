"""The MP's client package files (`/CCM_Client/<file>`) are served by `ClientFile`, which reads a whole small file
in one thread hop (issue 20): every reply is FileResponse's own (status, headers, body) for a plain GET, a HEAD, a
single and a multiple range, a malformed or unsatisfiable range, and a file larger than one chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send

from cmglab.services.management_point.routes_site import ClientFile

Make = Callable[[Path], FileResponse]


def _app(path: Path, make: Make) -> Callable[[Scope, Receive, Send], object]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await make(path)(scope, receive, send)

    return app


def _answer(path: Path, make: Make, method: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app(path, make))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="https://mp.lab") as c:
            return await c.request(method, "/ccm_client/ccmsetup.cab", headers=headers)

    r = asyncio.run(go())
    items, body = sorted(r.headers.multi_items()), r.content
    boundary = r.headers.get("content-type", "").partition("boundary=")[2]
    if boundary:  # a multiple range's boundary is random per reply
        items = [(k, v.replace(boundary, "B")) for k, v in items]
        body = body.replace(boundary.encode(), b"B")
    return r.status_code, items, body


@pytest.mark.parametrize("size", [0, 400, 64 * 1024 - 1, 64 * 1024, 200_000])
@pytest.mark.parametrize(
    "method,headers",
    [
        ("GET", {}),
        ("HEAD", {}),
        ("GET", {"Range": "bytes=0-3"}),
        ("GET", {"Range": "bytes=1-2,5-9"}),
        ("GET", {"Range": "bytes=9-1"}),
        ("GET", {"Range": "bytes=999999-"}),
        ("GET", {"Range": "bytes=0-3", "If-Range": '"other"'}),
    ],
)
def test_the_same_reply_as_file_response(tmp_path: Path, size: int, method: str, headers: dict[str, str]) -> None:
    path = tmp_path / "ccmsetup.cab"
    path.write_bytes(bytes(i % 251 for i in range(size)))
    found = path.stat()
    mine = _answer(
        path, lambda p: ClientFile(p, media_type="application/octet-stream", stat_result=found), method, headers
    )
    theirs = _answer(
        path, lambda p: FileResponse(p, media_type="application/octet-stream", stat_result=found), method, headers
    )
    assert mine == theirs
    if method == "GET" and not headers:
        assert mine[2] == path.read_bytes()
