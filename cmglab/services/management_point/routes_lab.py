"""Site database views for tests and administrators (the console's Devices / Certificates nodes):
read-only GETs without a token; changes (approve, site settings) need the lab admin token."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException
from pydantic import BaseModel, field_validator
from starlette.concurrency import run_in_threadpool

from cmglab.core.labconfig import SiteSettingsChange
from cmglab.services.management_point.parts import Parts
from cmglab.wire.kinds import RESOLUTIONS, ConflictStatus


class Resolution(BaseModel):
    action: ConflictStatus

    @field_validator("action")
    @classmethod
    def _an_admin_resolution(cls, action: ConflictStatus) -> ConflictStatus:
        if action not in RESOLUTIONS:
            raise ValueError(f"a resolution is one of {', '.join(RESOLUTIONS)}")
        return action


def router(mp: Parts) -> APIRouter:
    r = APIRouter(prefix="/_lab")
    token = mp.lab.admin_token()

    def require_admin(authorization: str | None = Header(default=None)) -> None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not given or not secrets.compare_digest(given, token):
            raise HTTPException(401, "the lab admin token is required", headers={"WWW-Authenticate": "Bearer"})

    @r.get("/clients")
    async def clients() -> dict[str, Any]:
        return {"clients": await run_in_threadpool(mp.store.clients)}

    @r.get("/clients/{sms_id}")
    async def client(sms_id: str) -> dict[str, Any]:
        row = await run_in_threadpool(mp.store.get_client, sms_id)
        if row is None:
            raise HTTPException(404, "no such client")
        return row.as_dict()

    @r.post("/clients/{sms_id}/approve", dependencies=[Depends(require_admin)])
    async def approve(sms_id: str, approved: bool = True) -> dict[str, Any]:
        if not await run_in_threadpool(mp.store.approve, sms_id, approved):
            raise HTTPException(404, "no such client")
        mp.logs.registration.info(f"Client {sms_id.upper()} {'approved' if approved else 'unapproved'} by the admin")
        return {"sms_id": sms_id.upper(), "approved": approved}

    @r.get("/conflicts")
    async def conflicts() -> dict[str, Any]:
        return {"conflicts": await run_in_threadpool(mp.store.conflicts)}

    @r.post("/conflicts/{conflict_id}/resolve", dependencies=[Depends(require_admin)])
    async def resolve(conflict_id: int, resolution: Resolution) -> dict[str, Any]:
        row = await run_in_threadpool(mp.store.resolve_conflict, conflict_id, resolution.action)
        if row is None:
            raise HTTPException(404, "no such conflicting record")
        mp.logs.registration.info(
            f"Conflicting record {conflict_id} for client '{row['sms_id']}' resolved by the admin: {resolution.action}"
        )
        return row

    @r.get("/tokens")
    async def tokens() -> dict[str, Any]:
        return {"tokens": await run_in_threadpool(mp.store.tokens)}

    @r.get("/bulk-tokens")
    async def bulk_tokens() -> dict[str, Any]:
        return {"bulk_tokens": await run_in_threadpool(mp.store.bulk_tokens)}

    @r.get("/ddrs")
    async def ddrs() -> dict[str, Any]:
        return {"ddrs": await run_in_threadpool(mp.store.ddrs)}

    @r.get("/policies")
    async def policies() -> dict[str, Any]:
        rows = await run_in_threadpool(mp.store.policies)
        return {
            "policies": [
                {
                    "policy_id": p.policy_id,
                    "version": p.version,
                    "category": p.category,
                    "flags": p.flags,
                    "secret": p.secret,
                }
                for p in rows
            ]
        }

    @r.get("/site")
    async def site() -> dict[str, Any]:
        settings = await run_in_threadpool(mp.store.site_settings)
        tenants = await run_in_threadpool(mp.store.tenants, False)
        return {"site_code": mp.site_code, "settings": settings.model_dump(), "tenants": tenants}

    @r.post("/site", dependencies=[Depends(require_admin)])
    async def change_site(change: SiteSettingsChange) -> dict[str, Any]:
        settings = await run_in_threadpool(mp.store.change_site_settings, change)
        return {"settings": settings.model_dump()}

    return r
