"""Typed errors of the Entra emulator and the one handler that renders them.

The login host answers in Entra's OAuth envelope (docs/protocol-notes.md, Entra §2.6): `error`,
`error_description` ("AADSTSnnnn: ...\\r\\nTrace ID: ...\\r\\nCorrelation ID: ...\\r\\nTimestamp: ..."),
`error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`. The DRS answers with the shape
AADInternals and dsreg read (`ErrorType`, `Message`, optional `SubCode`, `TraceId`, `Time`); its
`Message` starts with the AADSTS code of the check that failed (a lab choice: the real DRS text is
unconfirmed), so a client sees the same code on both hosts.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cmglab.runtime import errors

log = logging.getLogger("cmglab.entra")


class EntraError(errors.ServiceError):
    status: int = 400

    def body(self, *, trace_id: str, correlation_id: str, when: datetime) -> dict[str, Any]:
        raise NotImplementedError

    def response(self, request: Request) -> JSONResponse:
        trace_id = str(uuid.uuid4())
        # Entra echoes the client's request ID as the correlation ID
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        return JSONResponse(
            self.body(trace_id=trace_id, correlation_id=correlation_id, when=datetime.now(UTC)), status_code=self.status
        )


class AADSTSError(EntraError):
    """An error of the login host: `error` is the OAuth error, `code` the AADSTS number."""

    def __init__(self, code: int, error: str, message: str, status: int = 400) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.code, self.error, self.message, self.status = code, error, message, status

    def body(self, *, trace_id: str, correlation_id: str, when: datetime) -> dict[str, Any]:
        stamp = when.strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": self.error,
            "error_description": f"AADSTS{self.code}: {self.message}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}",
            "error_codes": [self.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={self.code}",
        }


class DRSError(EntraError):
    """An error of the Device Registration Service."""

    def __init__(self, status: int, error_type: str, code: int, message: str, subcode: str | None = None) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.status, self.error_type, self.code, self.message, self.subcode = status, error_type, code, message, subcode

    def body(self, *, trace_id: str, correlation_id: str, when: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {"ErrorType": self.error_type, "Message": f"AADSTS{self.code}: {self.message}"}
        if self.subcode:
            out["SubCode"] = self.subcode
        out.update({"TraceId": trace_id, "CorrelationId": correlation_id, "Time": when.strftime("%m-%d-%Y %H:%M:%SZ")})
        return out


def _observe(request: Request, exc: EntraError) -> None:
    log.info("%s %s -> %d %s", request.method, request.url.path, exc.status, exc)


def install_error_handler(app: FastAPI) -> None:
    errors.install_error_handler(app, EntraError, _observe)
