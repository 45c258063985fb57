"""The CMG's client listener serves its URLs on the lean path (cmglab/runtime/fastpath.py) with the same reply
bytes, headers and request record as its FastAPI app (tests/support/lean.py), in-process with the CMG's own app,
handler and error handler: an AADAuthInfo answer, each kind of CMGError (wrong host, bad request, unknown tenant,
no site yet, an unpublished URL of any method), Starlette's HTTPException and an unhandled exception (a 500).
/_lab/ stays the FastAPI app's. The listener itself is covered over real sockets by tests/test_cmg_*.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.exceptions import HTTPException

from cmglab.runtime.fastpath import LeanRoutes
from cmglab.runtime.lab import Lab
from cmglab.services.cmg.app import create_app
from cmglab.services.cmg.parts import Parts
from cmglab.wire.cloud_config import CloudConfig, OnboardedTenant
from tests.support.lean import assert_same, exchange

TENANT = "11111111-2222-3333-4444-555555555555"
CONFIG = CloudConfig(
    site_code="LAB",
    tenants=[OnboardedTenant(tenant_id=TENANT, client_app_id="app", resource_uri="https://res", authority="auth")],
)


class Failing:
    """A site configuration whose tenant lookup raises ERROR (the handler's way to an exception)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def tenant(self, tenant_id: str) -> None:
        raise self.error


@pytest.fixture(scope="module")
def parts(lab: Lab) -> Parts:
    return Parts.from_lab(lab)


@pytest.fixture
def app(parts: Parts) -> Iterator[FastAPI]:
    yield create_app(parts)
    parts.hub.config = None


def base(lab: Lab) -> str:
    return f"https://{lab.config.hosts.cmg}:{lab.port('cmg')}"


def aad(tenant: str = TENANT) -> str:
    return f"/CCM_Proxy_ServerAuth/AADAuthInfo?TenantID={tenant}"


def test_an_answer(lab: Lab, parts: Parts, app: FastAPI) -> None:
    parts.hub.config = CONFIG
    lean = assert_same(app, "GET", aad(), base_url=base(lab))
    assert lean.status == 200 and lean.record["status"] == 200


@pytest.mark.parametrize(
    ("method", "path", "host", "code"),
    [
        ("GET", aad(), "cmg.example.com", "InvalidHostname"),
        ("GET", "/CCM_Proxy_ServerAuth/AADAuthInfo", None, "InvalidRequest"),
        ("GET", aad("99999999-2222-3333-4444-555555555555"), None, "TenantNotOnboarded"),
        ("GET", "/nothing/here", None, "NotFound"),
        ("CCM_POST", "/CCM_Proxy_MutualAuth/72057594037927939/ccm_system/request", None, "NotFound"),
        ("GET", "/CCM_Proxy_ServerAuth/1/CCM_STS/%2e%2e/x", None, "InvalidUrl"),
    ],
)
def test_each_refusal(
    lab: Lab, parts: Parts, app: FastAPI, method: str, path: str, host: str | None, code: str
) -> None:
    parts.hub.config = CONFIG
    headers = {"host": host} if host else None
    lean = assert_same(app, method, path, base_url=base(lab), headers=headers)
    assert lean.record["refused"] == code and f'"Error":"{code}"'.encode() in lean.body


def test_no_site_yet(lab: Lab, app: FastAPI) -> None:
    lean = assert_same(app, "POST", "/CCM_Proxy_ServerAuth/1/CCM_STS", base_url=base(lab), content=b"{}")
    assert lean.status == 503 and lean.headers["connection"] == "close"  # a refused body is not read


@pytest.mark.parametrize(
    ("error", "status"), [(HTTPException(409, "busy"), 409), (RuntimeError("a bug"), 500)], ids=["http", "boom"]
)
def test_an_exception(lab: Lab, parts: Parts, app: FastAPI, error: Exception, status: int) -> None:
    parts.hub.config = Failing(error)  # type: ignore[assignment]
    lean = assert_same(app, "GET", aad(), base_url=base(lab))
    assert lean.status == status
    if status == 500:
        assert lean.body == b"Internal Server Error" and lean.record["error"] == "RuntimeError: a bug"


def status_of(app: object, path: str, base_url: str) -> int:
    async def go() -> int:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            return (await client.get(path)).status_code

    return asyncio.run(go())


def test_lab_paths_stay_the_apps(lab: Lab, app: FastAPI) -> None:
    lean = LeanRoutes(app)
    assert lean.handler("GET", "/_lab/health") is None and lean.handler("POST", "/_lab/nothing") is None
    assert lean.handler("CCM_POST", "/_lab") is not None  # not the admin prefix: the gateway's (a 404)
    state = app.state.lab
    for path, status in (("/_lab/nothing", 404), ("/_lab/requests", 401)):
        before = state.last_seq
        assert status_of(lean, path, base(lab)) == status_of(app, path, base(lab)) == status
        assert state.last_seq == before  # /_lab/ is not recorded
    assert exchange(lean, state, "GET", "/_lab", base_url=base(lab)).record["refused"] == "NotFound"
