"""The Entra ID + DRS emulator's FastAPI app: login host and DRS routes on one app (the DRS paths are
distinct), the /_lab/ directory admin, and Entra's error envelope."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from cmglab.runtime.admin import install_lab_admin, require_admin
from cmglab.services.entra import (
    lean,
    routes_admin,
    routes_authorize,
    routes_drs,
    routes_federation,
    routes_oidc,
    routes_sync,
    routes_token,
)
from cmglab.services.entra.errors import install_error_handler
from cmglab.services.entra.parts import Parts


def create_app(parts: Parts) -> FastAPI:
    lab = parts.lab
    app = FastAPI(title="cmglab Entra ID + DRS", docs_url=None, redoc_url=None, openapi_url=None)
    # admin routes first: /_lab/... must not be taken for a tenant segment
    app.include_router(routes_admin.router(parts, require_admin(lab)))
    app.include_router(routes_sync.router(parts.sync, require_admin(lab)))
    routes_sync.schedule(app, parts.sync, lab.settings.entra_sync_interval)
    app.include_router(routes_oidc.router(parts))
    app.include_router(routes_token.router(parts))
    app.include_router(routes_authorize.router(parts))
    app.include_router(routes_federation.router(parts.federation, lab))
    app.include_router(routes_drs.router(parts))
    # the reseed hashes passwords: off the event loop
    install_lab_admin(app, service="entra", lab=lab, reset=lambda: run_in_threadpool(parts.store.reset))
    install_error_handler(app)
    app.state.parts = parts
    # the same handlers, answered without FastAPI's layers when wrapped in fastpath.LeanRoutes (service.py)
    app.state.lean_routes = lean.lean_routes(parts)
    return app
