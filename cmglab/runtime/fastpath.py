"""A lean ASGI path for a service's hottest routes: the MP's `CCM_POST /<vdir>/request` (CcmMessaging) and
`POST /CCM_STS`, Entra's token endpoints and DRS join (a subclass matches their tenant segment).

FastAPI's layers (its error middleware, exception middleware, exit stacks, router, dependency solving) cost
about a quarter of a location request's CPU and add nothing to these routes, which take the raw `Request`
and return a `Response`: this path calls the very handlers the FastAPI routes use (`app.state.lean_routes`,
built in app.py) under the same `LabMiddleware` (record, trace span, fault rules), renders an exception with
the app's own exception handlers (the MP's `IISError`/`STSError`/`HTTPError` shapes, FastAPI's HTTPException
JSON), and answers an unhandled one with Starlette's plain 500 before raising it on, as its
`ServerErrorMiddleware` does. Any other method or path (a trailing slash, a probe) goes to the FastAPI app.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from cmglab.runtime.admin import LabMiddleware

Handler = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Any]
HANDLER_KEY = "cmglab.lean_handler"


class LeanRoutes:
    """ASGI: the routes in `app.state.lean_routes` ((method, path) -> handler) answered directly, everything
    else by APP. The MP's sits inside `IISPaths` (the path it matches is already IIS's lower-cased origin form);
    a subclass may match paths with parameters (`handler`), as long as no earlier route of APP takes them."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.routes: dict[tuple[str, str], Handler] = app.state.lean_routes
        self.recorded = LabMiddleware(self._answer, state=app.state.lab)

    def handler(self, method: str, path: str) -> Handler | None:
        """The handler answering METHOD PATH on the lean path, None for the FastAPI app."""
        return self.routes.get((method, path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handler(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        scope[HANDLER_KEY] = handler
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.recorded(scope, receive, tracked)  # type: ignore[arg-type]  # admin.py types scope as a dict
        except Exception:
            if not started:  # ServerErrorMiddleware's answer (the app has no debug page, no 500 handler)
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await scope[HANDLER_KEY](request)
        except Exception as exc:
            on_error = self._handler_for(exc)
            if on_error is None:
                raise
            if inspect.iscoroutinefunction(on_error):
                response = await on_error(request, exc)
            else:
                response = await run_in_threadpool(on_error, request, exc)
            exc.__traceback__ = None  # as Starlette: a reused exception must not pile up tracebacks
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        """The app's handler for EXC: by status for an HTTPException, then along its class' MRO (Starlette's
        lookup)."""
        handlers: dict[Any, ExceptionHandler] = self.app.exception_handlers
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None
