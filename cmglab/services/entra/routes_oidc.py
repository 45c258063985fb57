"""Login host discovery: OpenID configurations, JWKS, instance discovery, user realm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cmglab.services.entra import discovery
from cmglab.services.entra import store as st
from cmglab.services.entra.issuance import Issuer
from cmglab.services.entra.parts import Parts, base_url
from cmglab.services.entra.tokens import V2_ISSUER

# what Entra sends with its discovery documents
CACHED = {"Cache-Control": "max-age=86400, private", "Access-Control-Allow-Origin": "*"}


def _json(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers=CACHED)


def tenant_segment(entra: Parts, segment: str) -> tuple[str, str | None]:
    """The segment the documents use (the tenant GUID, or common/organizations) and the region."""
    with entra.store.plain() as u:  # plain SQL: the generation read, the tenant from the directory cache
        tenant = Issuer.tenant(u, segment, error="invalid_tenant")
    return (tenant.tenant_id, tenant.region) if tenant else (segment.lower(), None)


def openid_v1_handler(entra: Parts) -> Callable[[str, Request], JSONResponse]:
    """`GET /<tenant>/.well-known/openid-configuration` (run in a worker thread: it reads the store): the one
    handler behind the FastAPI route and the lean path (lean.py)."""

    def openid_v1(tenant: str, request: Request) -> JSONResponse:
        segment, region = tenant_segment(entra, tenant)
        return _json(discovery.openid_v1(base_url(request), segment, region))

    return openid_v1


def userrealm_handler(entra: Parts) -> Callable[[str, Request], JSONResponse]:
    """`GET /common/userrealm/<upn>` (a worker thread): the one handler behind the FastAPI routes and the lean
    path (lean.py)."""

    def userrealm(upn: str, request: Request) -> JSONResponse:
        with entra.store.plain() as u:  # the domain and its tenant from the directory cache (store.py), no session
            domain = st.domain_by_name(u, upn.rpartition("@")[2])
            tenant = st.tenant_by_id(u, domain.tenant_id) if domain else None
            name, federated = (domain.name, domain.federated) if domain else (None, False)
            brand = tenant.display_name if tenant else None
        if request.query_params.get("api-version") == "2.0":
            return JSONResponse(discovery.userrealm_v2(upn, name, federated, brand))
        port = request.url.port
        sts = f"https://sts.{name}{f':{port}' if port and port != 443 else ''}/adfs/services/trust"
        return JSONResponse(discovery.userrealm_v1(upn, name, federated, sts))

    return userrealm


def router(entra: Parts) -> APIRouter:
    r = APIRouter()
    r.get("/{tenant}/.well-known/openid-configuration")(openid_v1_handler(entra))

    def tenant_segment_of(segment: str) -> tuple[str, str | None]:
        return tenant_segment(entra, segment)

    @r.get("/{tenant}/v2.0/.well-known/openid-configuration")
    def openid_v2(tenant: str, request: Request) -> JSONResponse:
        segment, region = tenant_segment_of(tenant)
        return _json(discovery.openid_v2(base_url(request), segment, region))

    @r.get("/common/discovery/keys")
    @r.get("/discovery/keys")
    def keys_v1() -> JSONResponse:
        return _json({"keys": [entra.signer.jwk()]})

    @r.get("/{tenant}/discovery/keys")
    def tenant_keys_v1(tenant: str) -> JSONResponse:
        tenant_segment_of(tenant)
        return keys_v1()

    @r.get("/{tenant}/discovery/v2.0/keys")
    def keys_v2(tenant: str) -> JSONResponse:
        tenant_segment_of(tenant)  # the key is shared by every tenant: its issuer is the template
        return _json({"keys": [entra.signer.jwk(V2_ISSUER.format(tid="{tenantid}"))]})

    @r.get("/common/discovery/instance")
    def instance(request: Request, authorization_endpoint: str = "") -> JSONResponse:
        return _json(
            discovery.instance_discovery(
                base_url(request),
                request.url.hostname or "",
                authorization_endpoint,
                request.query_params.get("api-version", "1.1"),
                entra.lab_hosts,
            )
        )

    userrealm = userrealm_handler(entra)
    r.get("/common/userrealm/{upn}")(userrealm)
    r.get("/common/UserRealm/{upn}")(userrealm)

    return r
