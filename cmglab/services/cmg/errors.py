"""The CMG's own refusals, answered as JSON `{"Error": <code>, "Reason": <text>}` (the shape the
site's CCM_STS uses) and written to CMGService.log."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cmglab.runtime import errors
from cmglab.runtime.admin import record


class CMGError(errors.ServiceError):
    close = False  # answer with `Connection: close`: the connection is in no state to carry another request

    def __init__(self, status: int, code: str, reason: str, **extra: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.extra = status, code, reason, extra

    def response(self, request: Request | None = None) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.close or (request is not None and declares_body(request)):
            headers["Connection"] = "close"
        return JSONResponse(
            {"Error": self.code, "Reason": self.reason, **self.extra}, status_code=self.status, headers=headers
        )


def declares_body(request: Request) -> bool:
    """A refused request may still be sending the body it declared, which the CMG will not read: keeping the
    connection would let an unauthenticated client hold it open by trickling that body, so it is closed."""
    length = request.headers.get("content-length", "0")
    return "transfer-encoding" in request.headers or length.strip() not in ("", "0")


def not_found(path: str) -> CMGError:
    return CMGError(404, "NotFound", f"{path} is not a URL this cloud management gateway publishes")


def body_timeout(seconds: float, declared: int | None) -> CMGError:
    """The client declared a body and did not send it in time: 408 (RFC 9110 §15.5.9), and the connection is
    closed (the rest of that body may still arrive)."""
    error = CMGError(
        408, "RequestTimeout", f"the request body ({declared} bytes declared) did not arrive within {seconds:g} s"
    )
    error.close = True
    return error


def no_point() -> CMGError:
    return CMGError(503, "NoConnectionPoint", "no CMG connection point is connected to this gateway")


def install_error_handler(app: FastAPI, log: logging.Logger) -> None:
    """Every refusal is recorded (`refused`: its code) and written to CMGService.log."""

    def observe(request: Request, e: CMGError) -> None:
        record(request).refused = e.code
        client = request.client.host if request.client else "?"
        log.warning(f"{request.method} {request.scope['path']} from {client}: {e.status} {e.code}: {e.reason}")

    errors.install_error_handler(app, CMGError, observe)
