"""The lab console's web app: one page (`/`, permalinks `/trace/<id>`), its JSON API and its live
event stream. Everything here only reads; the one action (reset a service) needs the lab admin token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from cmglab.runtime.admin import install_lab_admin, require_admin
from cmglab.services.console import static_view
from cmglab.services.console.errors import ConsoleError, install_error_handler
from cmglab.services.console.parts import Parts
from cmglab.wire.tracing import STEPS

STATIC = Path(__file__).parent / "static"


def create_app(parts: Parts) -> FastAPI:
    console = parts
    app = FastAPI(title="cmglab console", docs_url=None, redoc_url=None, openapi_url=None)
    install_lab_admin(app, service="console", lab=console.lab, reset=console.store.clear)
    install_error_handler(app)
    admin_only = require_admin(console.lab)
    page = STATIC / "index.html"

    async def static_page(device: str, step: str, trace_id: str | None) -> HTMLResponse:
        if trace_id is not None:
            found = console.store.get(trace_id)
            traces = [found.detail()] if found is not None else []
            title = f"trace {trace_id}" + ("" if traces else " (not found)")
        else:
            newest = console.store.summaries(device=device, step=step, limit=100)
            traces = [t.detail() for t in (console.store.get(s["trace_id"]) for s in reversed(newest)) if t]
            title = (f"Journey of {device}" if device else "Journey (all devices)") + (f" · {step}" if step else "")
        listed = await console.devices.list()
        html = static_view.render(
            site_code=console.lab.config.site.code,
            services=console.collector.service_list(),
            devices=listed["devices"],
            conflicts=listed.get("conflicts"),
            summaries=console.store.summaries(device=device, step=step, limit=300),
            traces=traces,
            title=title,
            live_url=static_view.live_url(f"/trace/{trace_id}" if trace_id else "/", device, step),
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False, response_model=None)
    async def index(static: bool = False, device: str = "", step: str = "") -> FileResponse | HTMLResponse:
        """The live page; `?static=1` renders it once on the server (no script, no event stream)."""
        if static:
            return await static_page(device, step, None)
        return FileResponse(page, media_type="text/html; charset=utf-8")

    @app.get("/trace/{trace_id}", include_in_schema=False, response_model=None)
    async def trace_page(trace_id: str, static: bool = False) -> FileResponse | HTMLResponse:
        if static:
            return await static_page("", "", trace_id)
        return FileResponse(page, media_type="text/html; charset=utf-8")

    @app.get("/api/services")
    async def services() -> dict[str, Any]:
        return {"services": console.collector.service_list(), "steps": list(STEPS)}

    @app.get("/api/devices")
    async def devices() -> dict[str, Any]:
        return await console.devices.list()

    @app.get("/api/traces")
    async def traces(device: str = "", step: str = "", limit: int = 200, background: bool = False) -> dict[str, Any]:
        """Trace summaries, newest first; `background=true` includes the site's own periodic requests."""
        return {
            "traces": console.store.summaries(
                device=device, step=step, limit=max(1, min(limit, 1000)), background=background
            )
        }

    @app.get("/api/journey")
    async def journey(device: str = "", step: str = "", limit: int = 30) -> dict[str, Any]:
        """The filter's newest traces in full, oldest first: one device's journey through the lab."""
        newest = console.store.summaries(device=device, step=step, limit=max(1, min(limit, 200)))
        found = (console.store.get(s["trace_id"]) for s in reversed(newest))
        return {"device": device, "step": step, "traces": [t.detail() for t in found if t is not None]}

    @app.get("/api/traces/{trace_id}")
    async def trace(trace_id: str) -> dict[str, Any]:
        found = console.store.get(trace_id)
        if found is None:
            raise ConsoleError(
                404, f"no trace {trace_id} (yet): the console keeps the newest {console.store.capacity} traces"
            )
        return found.detail()

    @app.get("/api/events")
    async def events(device: str = "", step: str = "") -> StreamingResponse:
        return StreamingResponse(
            console.hub.stream(device=device, step=step),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/session")
    async def session() -> dict[str, Any]:
        return {
            "lab": str(console.lab.dir),
            "site_code": console.lab.config.site.code,
            "poll_interval": console.collector.interval,
        }

    @app.post("/api/services/{name}/reset", dependencies=[Depends(admin_only)])
    async def reset_service(name: str) -> dict[str, Any]:
        """Reset one service's store and records (what `POST /_lab/reset` does, from the page)."""
        service = console.collector.services.get(name)
        if service is None:
            raise ConsoleError(404, f"no service {name!r}")
        token = console.lab.admin_token()
        try:
            reply = await console.client.post(
                f"{service.url}/_lab/reset", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
        except httpx.HTTPError as e:
            raise ConsoleError(502, f"{name}: {type(e).__name__}: {e}") from e
        return {"service": name, "status": reply.status_code}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
