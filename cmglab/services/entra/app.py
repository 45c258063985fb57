"""The Entra ID + DRS emulator's FastAPI app: login host and DRS routes on one app (the DRS paths are
distinct), the /_lab/ directory admin, and Entra's error envelope."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from cmglab.core.ad import ad_path
from cmglab.runtime.admin import install_lab_admin, require_admin
from cmglab.runtime.lab import Lab
from cmglab.services.entra import (
    routes_admin,
    routes_authorize,
    routes_drs,
    routes_federation,
    routes_oidc,
    routes_sync,
    routes_token,
)
from cmglab.services.entra.connect_sync import ConnectSync
from cmglab.services.entra.context import Entra
from cmglab.services.entra.errors import install_error_handler
from cmglab.services.entra.federation import FederationService


def create_app(lab: Lab) -> FastAPI:
    entra = Entra.from_lab(lab)
    app = FastAPI(title="cmglab Entra ID + DRS", docs_url=None, redoc_url=None, openapi_url=None)
    # admin routes first: /_lab/... must not be taken for a tenant segment
    app.include_router(routes_admin.router(entra, require_admin(lab)))
    sync = ConnectSync(entra.store, ad_path(lab.dir))  # Entra Connect: the lab AD's computers -> devices
    app.include_router(routes_sync.router(sync, require_admin(lab)))
    routes_sync.schedule(app, sync, lab.settings.entra_sync_interval)
    app.include_router(routes_oidc.router(entra))
    app.include_router(routes_token.router(entra))
    app.include_router(routes_authorize.router(entra))
    app.include_router(routes_federation.router(FederationService(entra.store, entra.grants.federation_key)))
    app.include_router(routes_drs.router(entra))
    # the reseed hashes passwords: off the event loop
    install_lab_admin(app, service="entra", lab=lab, reset=lambda: run_in_threadpool(entra.store.reset))
    install_error_handler(app)
    app.state.entra = entra
    return app
