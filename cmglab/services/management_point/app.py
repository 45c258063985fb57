"""The MP's FastAPI app: CcmMessaging, SMS_MP, CCM_STS, CCM_Cloud, CCM_Client and the lab views."""

from __future__ import annotations

from fastapi import FastAPI

from cmglab.runtime.admin import install_lab_admin
from cmglab.runtime.client_package import build_package
from cmglab.services.management_point import routes_lab, routes_messaging, routes_site, routes_sms_mp
from cmglab.services.management_point.errors import install_error_handler
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.sts import TokenService


def create_app(parts: Parts) -> FastAPI:
    build_package(parts.lab)
    app = FastAPI(title="cmglab management point", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.parts = parts
    app.include_router(routes_messaging.router(parts))
    app.include_router(routes_sms_mp.router(parts))
    sts = TokenService(parts, parts.entra_keys)
    app.include_router(routes_site.router(parts, sts))
    app.include_router(routes_lab.router(parts))
    install_lab_admin(app, service="management-point", lab=parts.lab, reset=parts.store.reset)
    install_error_handler(app)
    # the same handlers, answered without FastAPI's layers when wrapped in fastpath.LeanRoutes (service.py)
    app.state.lean_routes = {
        **routes_messaging.lean_routes(parts),
        ("POST", "/ccm_sts"): routes_site.sts_handler(parts, sts),
        ("GET", "/ccm_client/{name}"): routes_site.client_file_handler(parts),
        **routes_sms_mp.lean_routes(parts),
    }
    return app
