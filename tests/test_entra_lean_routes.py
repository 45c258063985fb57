"""Entra's lean path (cmglab/services/entra/lean.py) takes only the paths its FastAPI routes would give the same
handlers, and answers them as the app does: the sign-in recorded by the lab middleware, an AADSTS error in Entra's
envelope. The routes behind it are covered over real sockets by tests/test_entra_*.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cmglab.runtime.lab import Lab
from cmglab.services.entra.app import create_app
from cmglab.services.entra.lean import EntraLeanRoutes
from cmglab.services.entra.parts import Parts
from tests.support.lab import new_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("lean") / "lab")


@pytest.fixture(scope="module")
def lean(lab: Lab) -> EntraLeanRoutes:
    return EntraLeanRoutes(create_app(Parts.from_lab(lab)))


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
def test_the_lean_path_takes_only_its_routes(lean: EntraLeanRoutes, method: str, path: str, taken: bool) -> None:
    assert (lean.handler(method, path) is not None) is taken


def post(lean: EntraLeanRoutes, path: str, form: dict[str, str]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=lean)
        async with httpx.AsyncClient(transport=transport, base_url="https://login.microsoftonline.com") as client:
            return await client.post(path, data=form)

    return asyncio.run(go())


def get(lean: EntraLeanRoutes, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=lean)
        async with httpx.AsyncClient(transport=transport, base_url="https://login.microsoftonline.com") as client:
            return await client.get(path)

    return asyncio.run(go())


def test_a_sign_in_on_the_lean_path_is_answered_and_recorded_as_by_the_app(lab: Lab, lean: EntraLeanRoutes) -> None:
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
