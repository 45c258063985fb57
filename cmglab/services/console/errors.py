"""The console's refusals: its JSON API answers `{"detail": <text>}` (FastAPI's shape, what the page reads)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cmglab.runtime import errors

log = logging.getLogger("cmglab.console")


class ConsoleError(errors.ServiceError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail

    def response(self, request: Request) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=self.status)


def _observe(request: Request, exc: ConsoleError) -> None:
    log.info("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.detail)


def install_error_handler(app: FastAPI) -> None:
    errors.install_error_handler(app, ConsoleError, _observe)
