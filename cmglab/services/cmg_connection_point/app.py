"""The connection point's admin listener (plain HTTP, internal network): `/_lab/*` only. Requests it
forwards for the CMG are recorded here too, so `/_lab/requests` shows each one with its rewritten URL."""

from __future__ import annotations

from fastapi import FastAPI

from cmglab.runtime.admin import install_lab_admin
from cmglab.services.cmg_connection_point.parts import SERVICE, Parts


def create_app(parts: Parts) -> FastAPI:
    app = FastAPI(title="cmglab CMG connection point", docs_url=None, redoc_url=None, openapi_url=None)
    install_lab_admin(app, service=SERVICE, lab=parts.lab, health=parts.health, state=parts.state)
    return app
