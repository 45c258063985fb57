"""The one error pattern every service follows: routes raise a typed error of their service
(`cmglab/services/<name>/errors.py`), and one exception handler per app renders it in that protocol's own
shape (Entra's AADSTS JSON, the MP's IIS pages and CCM_STS JSON, the CMG's `{"Error", "Reason"}`).
Each error builds its own reply; the service's `observe` writes what the refusal leaves behind (its log
line, the request record's `result` or `refused`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response


class ServiceError(Exception):
    """A refusal in the protocol's own shape: `status` is the HTTP status, `response()` the reply a
    client of that protocol expects."""

    status: int = 400

    def response(self, request: Request) -> Response:
        raise NotImplementedError


E = TypeVar("E", bound=ServiceError)


def install_error_handler(app: FastAPI, error_type: type[E], observe: Callable[[Request, E], None]) -> None:
    """Render every `error_type` the app's routes raise with its own `response()`, after `observe`."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, error_type)
        observe(request, exc)
        return exc.response(request)

    app.add_exception_handler(error_type, handle)
