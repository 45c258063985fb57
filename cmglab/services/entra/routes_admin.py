"""`/_lab/` directory administration: list (open, like /_lab/requests) and add (admin token)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from starlette.concurrency import run_in_threadpool

from cmglab.services.entra.directory import AppIn, DirectoryError, SyncedDeviceIn, TenantIn, UserIn
from cmglab.services.entra.parts import Parts


def router(entra: Parts, admin_only: Callable[..., None]) -> APIRouter:
    r = APIRouter(prefix="/_lab")
    d = entra.directory

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except DirectoryError as e:
            raise HTTPException(e.status, str(e)) from e

    @r.get("/tenants")
    async def tenants() -> dict[str, Any]:
        return {"tenants": await call(d.tenants)}

    @r.post("/tenants", status_code=201, dependencies=[Depends(admin_only)])
    async def add_tenant(body: TenantIn) -> dict[str, Any]:
        return dict(await call(d.add_tenant, body))

    @r.get("/users")
    async def users(tenant: str | None = None) -> dict[str, Any]:
        return {"users": await call(d.users, tenant)}

    @r.post("/users", status_code=201, dependencies=[Depends(admin_only)])
    async def add_user(body: UserIn) -> dict[str, Any]:
        return dict(await call(d.add_user, body))

    @r.get("/apps")
    async def apps() -> dict[str, Any]:
        return {"apps": await call(d.apps)}

    @r.post("/apps", status_code=201, dependencies=[Depends(admin_only)])
    async def add_app(body: AppIn) -> dict[str, Any]:
        return dict(await call(d.add_app, body))

    @r.get("/devices")
    async def devices(tenant: str | None = None) -> dict[str, Any]:
        return {"devices": await call(d.devices, tenant)}

    @r.post("/devices", status_code=201, dependencies=[Depends(admin_only)])
    async def sync_device(body: SyncedDeviceIn) -> dict[str, Any]:
        """Entra Connect's sync of a domain-joined computer: the hybrid device object, before its join."""
        return dict(await call(d.sync_device, body))

    return r
