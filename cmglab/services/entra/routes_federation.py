"""The lab's federation service (AD FS stand-in) at `https://sts.<federated domain>/adfs/services/trust/...`:
MEX metadata and the WS-Trust 1.3 usernamemixed endpoint (cmglab/services/entra/federation.py). A SOAP
fault answers with HTTP 500, as AD FS does."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cmglab.runtime.admin import record
from cmglab.services.entra import store as st
from cmglab.services.entra.federation import FederationService, SoapFault

SOAP = "application/soap+xml; charset=utf-8"


def router(sts: FederationService) -> APIRouter:
    r = APIRouter()

    def federated_domain(request: Request) -> tuple[str, str]:
        """(the federated domain the Host header names as sts.<domain>, the base URL the client used)."""
        host = (request.headers.get("host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        domain = name.removeprefix("sts.")
        with sts.store.session() as s:
            row = s.get(st.Domain, domain)
            if not name.startswith("sts.") or row is None or not row.federated:
                raise HTTPException(404, f"no federation service at {name}")
        return domain, f"https://{host}"

    @r.get("/adfs/services/trust/mex")
    async def mex(request: Request) -> Response:
        _, base = federated_domain(request)
        return Response(sts.mex(base), media_type=SOAP)

    @r.post("/adfs/services/trust/13/usernamemixed")
    async def usernamemixed(request: Request) -> Response:
        domain, _ = federated_domain(request)
        body = await request.body()
        try:
            rstr = await run_in_threadpool(sts.issue, domain, body)
        except SoapFault as e:
            record(request).update(auth_kind="wstrust", error=e.subcode)
            return Response(e.envelope(), status_code=500, media_type=SOAP)
        record(request).update(auth_kind="wstrust")
        return Response(rstr, media_type=SOAP)

    return r
