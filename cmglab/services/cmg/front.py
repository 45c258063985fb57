"""The client listener's front door: a request for this gateway's own URLs goes to the CMG's handler as plain
ASGI, past FastAPI's router and middleware layers; /_lab/ (and a target that is not a path) to the FastAPI app.

Why: the CMG's URLs are one catch-all route with no dependencies and one error type, yet profiles of the
forwarding path (issue 20) spent a large share of the CMG's CPU per request in the layers every FastAPI request
passes (telemetry and body-limit wrappers, ExceptionMiddleware, AsyncExitStack, the router's matching). What
each request gets from the app is kept, with the app's own objects: the recorder and fault injector
(`LabMiddleware`, the state `install_lab_admin` made), the app's handler for `CMGError` (its log line and the
record's `refused`), and Starlette's `ServerErrorMiddleware` (a 500 for anything else, then re-raised); the
listener's body limit and head limits wrap it as before (`runtime.server`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.middleware.errors import ServerErrorMiddleware

from cmglab.runtime.admin import ADMIN_PREFIX, LabMiddleware, LabState
from cmglab.services.cmg.errors import CMGError

Handler = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class Front:
    """An ASGI app: `handler` for the gateway's URLs, `app` (the FastAPI app) for the rest."""

    def __init__(self, app: FastAPI, state: LabState, handler: Handler) -> None:
        self.app, self.handler = app, handler
        on_error = app.exception_handlers[CMGError]  # install_error_handler's: one place says what a refusal does
        self.on_error: ErrorHandler = on_error  # type: ignore[assignment]
        last_resort = app.exception_handlers.get(500) or app.exception_handlers.get(Exception)
        recorded: Any = LabMiddleware(self._endpoint, state)  # typed on dict scopes, Starlette on MutableMapping
        self.lean = ServerErrorMiddleware(recorded, handler=last_resort)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/") or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        await self.lean(scope, receive, send)

    async def _endpoint(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive, send)
        try:
            response = await self.handler(request)
        except CMGError as e:  # raised before a reply started (a streamed reply that breaks is cut, not answered)
            response = await self.on_error(request, e)
        await response(scope, receive, send)
