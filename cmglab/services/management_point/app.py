"""The MP's FastAPI app: CcmMessaging, SMS_MP, CCM_STS, CCM_Cloud, CCM_Client and the lab views."""

from __future__ import annotations

from fastapi import FastAPI

from cmglab.runtime.admin import install_lab_admin
from cmglab.runtime.lab import Lab
from cmglab.services.management_point import routes_lab, routes_messaging, routes_site, routes_sms_mp
from cmglab.services.management_point.content import build_package
from cmglab.services.management_point.mplogs import MPLogs
from cmglab.services.management_point.policy import default_policies
from cmglab.services.management_point.site import MP
from cmglab.services.management_point.store import Store
from cmglab.services.management_point.sts import TokenService
from cmglab.services.management_point.windowsauth import WindowsAuth
from cmglab.wire.entra_tokens import EntraKeys


def create_mp(lab: Lab) -> MP:
    return MP(lab, Store(lab, policy_factory=default_policies), MPLogs.open(lab))


def create_app(lab: Lab, mp: MP | None = None) -> FastAPI:
    mp = mp or create_mp(lab)
    build_package(lab)
    # the site's synchronised copy of Entra's signing keys: the MP has no route to Entra (internal network)
    sts = TokenService(mp, EntraKeys.from_certificates([lab.pki.entra_signing.cert()]))

    app = FastAPI(title="cmglab management point", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.mp = mp
    windows = WindowsAuth(lab)
    app.include_router(routes_messaging.router(mp, windows))
    app.include_router(routes_sms_mp.router(mp, windows))
    app.include_router(routes_site.router(mp, sts))
    app.include_router(routes_lab.router(mp))
    install_lab_admin(app, service="management-point", lab=lab, reset=mp.store.reset)
    return app
