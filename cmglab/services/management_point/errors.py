"""Typed errors of the management point and the one handler that renders them, each in the shape its
client reads:

- `IISError`: an IIS status page (HTML), as IIS answers before the ISAPI runs (403.7 client certificate
  required, 403 access denied) and as getpolicy.dll refuses a policy request;
- `STSError`: CCM_STS's JSON `{"Error": <code>, "Reason": <text>}` (lab-defined, docs/architecture.md);
- `HTTPError`: the `{"detail": <text>}` JSON of the lab's plain HTTP refusals (oversized body, a bad
  `Client-Cert` header, a missing or refused CCM token, the connection point's configuration, the client
  package), as FastAPI's HTTPException renders it.

CcmMessaging refusals are not errors here: the message dispatcher answers them as replies (status + reason).
Each error may name the `result` the request record keeps (the console and reliability tools read it).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from cmglab.runtime import errors
from cmglab.runtime.admin import record

CERT_REQUIRED = (
    "<html><head><title>403 - Forbidden: Client certificate required</title></head><body>"
    "<h2>403.7 - Forbidden: Client certificate required.</h2></body></html>"
)
FORBIDDEN = "<html><head><title>403 - Forbidden: Access is denied.</title></head><body></body></html>"
HTML_ERROR = "<HTML><HEAD><TITLE>ERROR</TITLE></HEAD><BODY></BODY></HTML>"  # getpolicy.dll's refusal


class MPError(errors.ServiceError):
    result: str | None = None  # what the request record keeps of the refusal


class IISError(MPError):
    def __init__(self, status: int, page: str, result: str | None = None) -> None:
        super().__init__(page)
        self.status, self.page, self.result = status, page, result

    def response(self, request: Request) -> Response:
        return HTMLResponse(self.page, status_code=self.status)


class STSError(MPError):
    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason
        self.result = f"{code}: {reason}"

    def body(self) -> dict[str, str]:
        return {"Error": self.code, "Reason": self.reason}

    def response(self, request: Request) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class HTTPError(MPError):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers

    def response(self, request: Request) -> Response:
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=self.headers)


def _observe(request: Request, exc: MPError) -> None:
    if exc.result is not None:
        record(request).result = exc.result


def install_error_handler(app: FastAPI) -> None:
    errors.install_error_handler(app, MPError, _observe)
