"""Entra's lean path (cmglab/services/entra/lean.py) takes only the paths its FastAPI routes would give the same
handlers, and answers them as the app does (tests/support/lean.py: the same reply bytes, headers and request
record): a sign-in, the discovery reads, an AADSTS error and a DRS error in Entra's envelopes, Starlette's
HTTPException and an unhandled exception (a 500). The routes behind it are covered over real sockets by
tests/test_entra_*.py."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import httpx
import pytest
from starlette.exceptions import HTTPException

from cmglab.runtime.fastpath import LeanRoutes
from cmglab.runtime.lab import Lab
from cmglab.services.entra.app import create_app
from cmglab.services.entra.parts import Parts
from tests.support.lab import new_lab
from tests.support.lean import assert_same


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("lean") / "lab")


@pytest.fixture(scope="module")
def parts(lab: Lab) -> Parts:
    return Parts.from_lab(lab)


@pytest.fixture(scope="module")
def lean(parts: Parts) -> LeanRoutes:
    return LeanRoutes(create_app(parts))


@pytest.mark.parametrize(
    ("method", "path", "taken"),
    [
        ("POST", "/common/oauth2/token", True),
        ("POST", "/contoso.onmicrosoft.com/oauth2/v2.0/token", True),
        ("POST", "/EnrollmentServer/device/", True),
        ("POST", "/EnrollmentServer/device", True),
        ("GET", "/common/oauth2/token", False),  # the app's 405
        ("POST", "//oauth2/token", False),  # an empty tenant segment: no route
        ("POST", "/common/oauth2/token/", False),
        ("POST", "/a/b/oauth2/token", False),
        ("POST", "/common/oauth2/devicecode", False),
        ("POST", "/_lab/reset", False),
        ("GET", "/lab.test/.well-known/openid-configuration", True),
        ("GET", "/common/userrealm/user@lab.test", True),
        ("GET", "/common/UserRealm/user@lab.test", True),
        ("GET", "/lab.test/discover", True),
        ("GET", "/lab.test/Discover", True),
        ("GET", "/common/userrealm/", False),
        ("GET", "/lab.test/v2.0/.well-known/openid-configuration", False),
        ("GET", "/common/discovery/keys", False),
        ("GET", "/discovery/keys", False),
        ("GET", "/_lab/health", False),
        ("POST", "/lab.test/discover", False),
    ],
)
def test_the_lean_path_takes_only_its_routes(lean: LeanRoutes, method: str, path: str, taken: bool) -> None:
    assert (lean.handler(method, path) is not None) is taken


def post(lean: LeanRoutes, path: str, form: dict[str, str]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=lean)
        async with httpx.AsyncClient(transport=transport, base_url="https://login.microsoftonline.com") as client:
            return await client.post(path, data=form)

    return asyncio.run(go())


def get(lean: LeanRoutes, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=lean)
        async with httpx.AsyncClient(transport=transport, base_url="https://login.microsoftonline.com") as client:
            return await client.get(path)

    return asyncio.run(go())


def test_a_sign_in_on_the_lean_path_is_answered_and_recorded_as_by_the_app(lab: Lab, lean: LeanRoutes) -> None:
    user, app = lab.config.primary_tenant.users[0], lab.config.apps[0]
    form = {
        "grant_type": "password",
        "username": user.upn,
        "password": user.password,
        "client_id": app.app_id,
        "resource": "https://graph.microsoft.com",
    }
    reply = post(lean, f"/{lab.config.primary_tenant.tenant_id}/oauth2/token", form)
    assert reply.status_code == 200 and reply.json()["token_type"] == "Bearer"
    assert reply.headers["cache-control"] == "no-store, no-cache"
    last = lean.app.state.lab.requests[-1]
    assert last.auth_kind == "password" and last.auth_subject == user.upn.lower()

    realm = get(lean, f"/common/userrealm/{user.upn}?api-version=2.0")
    assert realm.status_code == 200 and realm.json()["NameSpaceType"] == "Managed"
    domain = lab.config.primary_tenant.initial_domain
    for path in (f"/{domain}/.well-known/openid-configuration", f"/{domain}/discover"):
        assert get(lean, path).status_code == 200
    unknown = get(lean, "/nowhere.test/discover")
    assert unknown.status_code == 404 and unknown.json()["ErrorType"] == "DirectoryError"

    refused = post(lean, "/common/oauth2/v2.0/token", {"grant_type": "magic"})
    assert refused.status_code == 400
    body = refused.json()
    assert body["error"] == "unsupported_grant_type" and body["error_codes"] == [70003]


BASE = "https://login.microsoftonline.com"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# made fresh per request: trace and correlation IDs, times, signed and random tokens
FRESH = (
    UUID,
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ",
    r"\d\d-\d\d-\d{4} \d\d:\d\d:\d\dZ",
    r"eyJ[\w-]*\.[\w-]*\.[\w-]*",
    r'"refresh_token":"[^"]*"',
    r'"(?:expires_on|not_before)":"\d+"',
)
FORM = {"content-type": "application/x-www-form-urlencoded"}


def ropc(lab: Lab, password: str | None = None) -> bytes:
    user, app = lab.config.primary_tenant.users[0], lab.config.apps[0]
    form = {
        "grant_type": "password",
        "username": user.upn,
        "password": password or user.password,
        "client_id": app.app_id,
        "resource": "https://graph.microsoft.com",
    }
    return urlencode(form).encode()


def test_the_same_answers_as_the_app(lab: Lab, lean: LeanRoutes) -> None:
    app, tenant = lean.app, lab.config.primary_tenant
    domain, upn = tenant.initial_domain, tenant.users[0].upn
    for path in (f"/{domain}/.well-known/openid-configuration", f"/common/userrealm/{upn}?api-version=2.0"):
        assert assert_same(app, "GET", path, base_url=BASE).status == 200
    assert assert_same(app, "GET", f"/common/UserRealm/{upn}", base_url=BASE).status == 200
    assert assert_same(app, "GET", f"/{domain}/discover", base_url=BASE).status == 200
    unknown = assert_same(app, "GET", "/nowhere.test/discover", base_url=BASE, fresh=FRESH)
    assert unknown.status == 404 and b'"ErrorType":"DirectoryError"' in unknown.body  # a DRSError
    signed_in = assert_same(
        app, "POST", f"/{tenant.tenant_id}/oauth2/token", base_url=BASE, headers=FORM, content=ropc(lab), fresh=FRESH
    )
    assert signed_in.status == 200 and signed_in.record["auth_kind"] == "password"
    refused = assert_same(
        app, "POST", "/common/oauth2/v2.0/token", base_url=BASE, headers=FORM, content=b"grant_type=magic", fresh=FRESH
    )
    assert refused.status == 400 and b"AADSTS70003" in refused.body  # an AADSTSError
    unauthenticated = assert_same(app, "POST", "/EnrollmentServer/device/", base_url=BASE, content=b"{}", fresh=FRESH)
    assert unauthenticated.status == 401


@pytest.mark.parametrize(
    ("error", "status"), [(HTTPException(429, "slow down"), 429), (RuntimeError("a bug"), 500)], ids=["http", "boom"]
)
def test_an_exception(
    lab: Lab, parts: Parts, lean: LeanRoutes, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    def token(request: object) -> None:
        raise error

    monkeypatch.setattr(parts.grants, "token", token)
    answer = assert_same(lean.app, "POST", "/common/oauth2/token", base_url=BASE, headers=FORM, content=ropc(lab))
    assert answer.status == status
    if status == 500:
        assert answer.body == b"Internal Server Error" and answer.record["error"] == "RuntimeError: a bug"
