"""The CRL host's one refusal: a file it does not publish, `404 {"detail": <text>}` (plain HTTP, like a CDP)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cmglab.runtime import errors


class NotPublished(errors.ServiceError):
    status = 404

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def response(self, request: Request) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=self.status)


def install_error_handler(app: FastAPI) -> None:
    errors.install_error_handler(app, NotPublished, lambda request, exc: None)
