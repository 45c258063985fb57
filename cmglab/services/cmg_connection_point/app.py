"""The connection point's admin listener (plain HTTP, internal network): `/_lab/*` only. Requests it
forwards for the CMG are recorded here too, so `/_lab/requests` shows each one with its rewritten URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from cmglab.runtime.admin import LabState, install_lab_admin
from cmglab.runtime.lab import Lab


def create_app(lab: Lab, health: Callable[[], dict[str, Any]]) -> tuple[FastAPI, LabState]:
    app = FastAPI(title="cmglab CMG connection point", docs_url=None, redoc_url=None, openapi_url=None)
    state = install_lab_admin(app, service="cmg-connection-point", lab=lab, health=health)
    return app, state
