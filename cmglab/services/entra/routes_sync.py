"""`POST /_lab/sync` (admin): one Entra Connect sync cycle now (`cmglab entra sync`); and the cycle that
runs every `CMGLAB_ENTRA_SYNC_INTERVAL` seconds while the service runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from starlette.concurrency import run_in_threadpool

from cmglab.core.ad import ADError
from cmglab.services.entra.connect_sync import ConnectSync


def router(sync: ConnectSync, admin_only: Callable[..., None]) -> APIRouter:
    r = APIRouter(prefix="/_lab")

    @r.post("/sync", dependencies=[Depends(admin_only)])
    async def sync_now() -> dict[str, Any]:
        try:
            return (await run_in_threadpool(sync.run)).view()
        except (ADError, OSError, ValueError) as e:
            raise HTTPException(503, f"the directory cannot be read: {e}") from e

    return r


def schedule(app: FastAPI, sync: ConnectSync, interval: float) -> None:
    """Start the cycle with the app, stop it with the app (0 or less: no cycle)."""
    if interval <= 0:
        return
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        tasks.append(asyncio.create_task(sync.every(interval)))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.router.on_startup.append(start)
    app.router.on_shutdown.append(stop)
