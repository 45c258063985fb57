"""The lean path: a service's hottest routes answered as plain ASGI, past FastAPI's layers, with the same reply
and the same request record as the FastAPI app would give (the MP's CcmMessaging and CCM_STS, Entra's token
endpoints, DRS join and discovery reads, every URL of the CMG's client listener).

Why: FastAPI's layers (its telemetry, body-limit, exception and exit-stack middleware, the router's matching,
dependency solving) cost about a quarter of a cheap request's CPU (issue 20) and add nothing to routes whose
handler takes the raw `Request` and returns a `Response`.

A service declares its lean routes once, beside its FastAPI routes: `app.state.lean_routes`, a mapping
(method, path) -> handler, where
- method is an HTTP method, exactly (a GET route does not take HEAD here: the app answers HEAD), or `ANY`;
- path is a path of the app's own routes, with Starlette's `{name}` / `{name:path}` parameters matched as the
  FastAPI route matches them (`compile_path`); the handler finds them in `request.path_params`;
- the handler, `async (Request) -> Response`, is the very one the app's FastAPI route calls.
The FastAPI app must hold a route for every one of them (the same handler), and no earlier route of the app may
take their paths: the lean path is only a shorter way to the same answer. Paths under /_lab/ (the lab's admin
routes, first in every app) and every other request go to the FastAPI app.

What a lean request keeps, as the FastAPI app's stack would do it:
- the app's middleware (`app.user_middleware`, outermost first: the recorder, trace span and fault injector of
  `runtime.admin.LabMiddleware`), each instantiated once more around the handler (so middleware keeps its state
  outside the instance, as LabMiddleware does in LabState);
- the app's exception handlers, looked up as Starlette's `ExceptionMiddleware` does (an HTTPException by its
  status first, then the exception's class along its MRO), so a service's typed errors and FastAPI's
  HTTPException JSON are rendered as on the FastAPI path; a handled exception raised after the reply started
  becomes Starlette's `RuntimeError`, as there;
- Starlette's `ServerErrorMiddleware` outermost: anything else answers the plain `500 Internal Server Error` (or
  the app's 500 handler) when no reply has started, and is raised on to the server;
- `scope["app"]` (the FastAPI app) and `scope["path_params"]`.
What it skips: FastAPI's telemetry, its `max_body_size` limit (refused here when set: no service sets it; the
listener's `runtime.limits` wrap both paths), the router (no `scope["route"]`/`["endpoint"]`/`["router"]`), its
exit stacks and dependency solving (lean handlers declare no dependencies).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, PathConvertor, StringConvertor
from starlette.exceptions import HTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.routing import Match, Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cmglab.runtime.admin import ADMIN_PREFIX

Handler = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Any]
LeanTable = Mapping[tuple[str, str], Handler]

ANY = "*"  # a lean route's method: every method (the CMG's URLs: IIS takes CCM_POST as any other verb)
HANDLER_KEY = "cmglab.lean_handler"
_NO_PARAMS: dict[str, Any] = {}


@dataclass(frozen=True)
class _Template:
    """A lean route with path parameters, compiled as Starlette compiles the FastAPI route's path."""

    regex: re.Pattern[str]
    convertors: dict[str, Convertor[Any]] | None  # None: every parameter a string as matched (str, path)
    handler: Handler

    def params(self, found: re.Match[str]) -> dict[str, Any]:
        matched = found.groupdict()
        if self.convertors is not None:
            matched = {name: self.convertors[name].convert(value) for name, value in matched.items()}
        return matched


class LeanRoutes:
    """ASGI: APP's lean routes (`app.state.lean_routes`) answered directly, everything else by APP (the module's
    docstring says what a lean request keeps)."""

    def __init__(self, app: FastAPI) -> None:
        if getattr(app, "max_body_size", None) is not None:
            raise ValueError("the lean path does not apply FastAPI's max_body_size: limit the listener instead")
        self.app = app
        self.exact: dict[tuple[str, str], Handler] = {}
        templates: list[tuple[str, _Template]] = []
        table: LeanTable = app.state.lean_routes
        for (method, path), handler in table.items():
            regex, _, convertors = compile_path(path)
            if not convertors:
                self.exact[(method, path)] = handler
                continue
            as_matched = all(isinstance(c, StringConvertor | PathConvertor) for c in convertors.values())
            templates.append((method, _Template(regex, None if as_matched else convertors, handler)))
        self.any_method = any(method == ANY for method, _ in self.exact)
        # per method, in the table's order (ANY routes in every list); a method no template names: ANY's list
        self.templates: dict[str, list[_Template]] = {}
        for method in {m for m, _ in templates if m != ANY}:
            self.templates[method] = [t for m, t in templates if m in (method, ANY)]
        self.any_templates = [t for m, t in templates if m == ANY]
        # Starlette's split (build_middleware_stack): 500/Exception for the last resort, the rest by status/class
        last_resort: ExceptionHandler | None = None
        self.by_status: dict[int, ExceptionHandler] = {}
        self.by_class: dict[type[Exception], ExceptionHandler] = {}
        for key, on_error in app.exception_handlers.items():
            if key in (500, Exception):
                last_resort = on_error
            elif isinstance(key, int):
                self.by_status[key] = on_error
            else:
                self.by_class[key] = on_error
        stack: ASGIApp = self._answer
        for cls, args, kwargs in reversed(app.user_middleware):
            stack = cls(stack, *args, **kwargs)
        self.stack = ServerErrorMiddleware(stack, handler=last_resort, debug=app.debug)

    def handler(self, method: str, path: str) -> Handler | None:
        """The handler answering METHOD PATH on the lean path, None for the FastAPI app."""
        found = self.match(method, path)
        return None if found is None else found[0]

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, Any]] | None:
        """The lean handler of METHOD PATH and its path parameters; None: the FastAPI app answers it."""
        if path.startswith(ADMIN_PREFIX):
            return None
        handler = self.exact.get((method, path))
        if handler is None and self.any_method:
            handler = self.exact.get((ANY, path))
        if handler is not None:
            return handler, _NO_PARAMS
        for t in self.templates.get(method, self.any_templates):
            found = t.regex.match(path)
            if found is not None:
                return t.handler, t.params(found)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.match(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        handler, params = found
        scope["app"], scope[HANDLER_KEY] = self.app, handler
        if params:
            scope["path_params"] = params
        await self.stack(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The handler and its reply, an exception rendered by the app's handler for it (Starlette's
        `wrap_app_handling_exceptions`, with the request the handler had)."""
        request = Request(scope, receive, send)
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            response = await scope[HANDLER_KEY](request)
            await response(scope, receive, sender)
        except Exception as exc:
            on_error = self._handler_for(exc)
            if on_error is None:
                raise
            if started:
                raise RuntimeError("Caught handled exception, but response already started.") from exc
            if inspect.iscoroutinefunction(on_error):
                rendered = await on_error(request, exc)
            else:
                rendered = await run_in_threadpool(on_error, request, exc)
            if rendered is not None:
                await rendered(scope, receive, sender)
            exc.__traceback__ = None  # as Starlette: a reused exception must not pile up tracebacks

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        """The app's handler for EXC: by status for an HTTPException, then along its class' MRO."""
        if isinstance(exc, HTTPException) and exc.status_code in self.by_status:
            return self.by_status[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self.by_class:
                return self.by_class[cls]
        return None


class Endpoint:
    """HANDLER as a plain ASGI endpoint, for a FastAPI route that takes every method (Starlette limits a
    function endpoint to GET/HEAD unless told which): `any_method_route`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


class _AnyMethodRoute(Route):
    """A route that, as the lean path, leaves /_lab/ to the app's admin routes (their 404 and 405 included)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"].startswith(ADMIN_PREFIX):
            return Match.NONE, {}
        return super().matches(scope)


def any_method_route(path: str, handler: Handler) -> Route:
    """The FastAPI app's route for PATH (outside /_lab/) with every method: an `ANY` lean route's twin."""
    return _AnyMethodRoute(path, Endpoint(handler), include_in_schema=False)
