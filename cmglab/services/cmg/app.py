"""The CMG's client listener (HTTPS; client certificate optional at TLS, decided per route family).

Transport only: parse the URL (routing), decide who may pass (auth), then forward (proxy), answer
AADAuthInfo, or serve content. Every refusal happens here, before the site sees anything.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from cmglab.runtime.admin import install_lab_admin, record
from cmglab.runtime.certinfo import client_cert
from cmglab.runtime.fastpath import ANY, any_method_route
from cmglab.services.cmg import routing
from cmglab.services.cmg.auth import MESSAGING_PATH, Identity
from cmglab.services.cmg.errors import CMGError, install_error_handler, not_found
from cmglab.services.cmg.parts import Parts
from cmglab.wire import cmg_urls
from cmglab.wire.kinds import AuthKind
from cmglab.wire.requests import RequestRecord

GATEWAY_URLS = "/{path:path}"
CONTENT_TYPE = "application/octet-stream"  # a package file from the CMG's storage


def _query(request: Request, name: str) -> str | None:
    """A query parameter by name, case-insensitively (IIS)."""
    for key, value in request.query_params.multi_items():
        if key.lower() == name.lower():
            return value
    return None


def _annotate(rec: RequestRecord, identity: Identity) -> None:
    rec.authenticated(identity.kind, identity.subject)


def create_app(parts: Parts) -> FastAPI:
    cmg = parts
    app = FastAPI(title="cmglab cloud management gateway", docs_url=None, redoc_url=None, openapi_url=None)
    state = install_lab_admin(app, service="cmg", lab=cmg.lab, health=cmg.hub.snapshot, private=True)
    state.observers.append(cmg.stats.observe(routing.stats_uri))  # CMGService.log counts what the recorder sees
    install_error_handler(app, cmg.log)

    async def server_auth(request: Request, endpoint: str | None, *, messaging: bool = False) -> Identity:
        return await cmg.auth.server(
            request.headers.get("authorization"), endpoint, cmg.hub.config, messaging=messaging
        )

    async def proxied(request: Request, route: routing.ProxyRoute) -> Response:
        rec = record(request)
        if cmg.hub.config is None:
            raise CMGError(
                503,
                "SiteNotConnected",
                "no connection point has connected yet: the site has published no URLs to this gateway",
            )
        if routing.published(cmg.hub.config, route) is None:
            raise not_found(request.scope["path"])
        if route.family == routing.MUTUAL:
            identity = cmg.auth.mutual(client_cert(request))
        else:
            messaging = request.method.upper() == "CCM_POST" and route.rest.lower() == MESSAGING_PATH
            identity = await server_auth(request, route.endpoint, messaging=messaging)
        _annotate(rec, identity)
        return await cmg.proxy.forward(
            request, route, auth_kind=identity.kind, client_cert=identity.client_cert, rec=rec
        )

    def aad_auth_info(request: Request) -> Response:
        tenant_id = (_query(request, "TenantID") or "").strip()
        if not tenant_id:
            raise CMGError(400, "InvalidRequest", "AADAuthInfo needs ?TenantID=<tenant GUID>")
        if cmg.hub.config is None:
            raise CMGError(503, "SiteNotConnected", "the site has not published its Entra tenants to this gateway")
        tenant = cmg.hub.config.tenant(tenant_id)
        if tenant is not None:
            return JSONResponse(
                {
                    "AADTENANTID": tenant.tenant_id,
                    "AADCLIENTAPPID": tenant.client_app_id,
                    "AADRESOURCEURI": tenant.resource_uri,
                    "AADAUTHORITY": tenant.authority,
                }
            )
        raise CMGError(
            404, "TenantNotOnboarded", f"tenant {tenant_id} is not onboarded to this site", TenantID=tenant_id
        )

    async def content_xml(request: Request) -> Response:
        identity = await server_auth(request, None)
        _annotate(record(request), identity)
        pid, cid = _query(request, "pid"), _query(request, "cid")
        if not pid or not cid:
            raise CMGError(400, "InvalidRequest", "getcontentxmlsecure needs ?pid=<package>&cid=<content>")
        xml = cmg.content.content_xml(pid, cid, cmg.hub.config)
        return Response(xml, media_type="application/xml; charset=utf-8")

    async def content_file(request: Request, route: routing.ContentFileRoute) -> Response:
        rec = record(request)
        if cmg.content.signed(route.package_id, route.filename, _query(request, "se"), _query(request, "sig")):
            rec.authenticated(AuthKind.SIGNED_URL, f"{route.package_id}/{route.filename}")
        else:
            _annotate(rec, await server_auth(request, None))
        path = cmg.content.path(route.package_id, route.filename, cmg.hub.config)
        # a whole small file from memory; HEAD, a range request and a large file as FileResponse answers them
        small = (
            cmg.content.small_file(path, CONTENT_TYPE)
            if request.method == "GET" and "range" not in request.headers
            else None
        )
        if small is not None:
            whole = Response(small.body)
            whole.raw_headers = list(small.raw_headers)
            return whole
        return FileResponse(path, media_type=CONTENT_TYPE)

    def route_of(request: Request) -> routing.Route | None:
        """The route, read from the raw target only when the client named this gateway in `Host` (one
        header, the CMG's name and port): the forwarded URL is built from the CMG's name, never the client's."""
        hosts = request.headers.getlist("host")
        if len(hosts) != 1 or not cmg_urls.same_authority(hosts[0], cmg.lab.config.hosts.cmg, cmg.lab.port("cmg")):
            raise CMGError(
                400,
                "InvalidHostname",
                f"the request names host {', '.join(hosts)[:120]!r}, not this gateway ({cmg.lab.config.hosts.cmg})",
            )
        if len(request.headers.getlist("authorization")) > 1:
            # the CMG checks one credential; the site must never be handed another to read instead
            raise CMGError(400, "InvalidRequest", "the request has more than one Authorization header")
        if "transfer-encoding" in request.headers and "content-length" in request.headers:
            # h11 lets chunked win; a hop that read Content-Length instead would see another request
            raise CMGError(400, "InvalidRequest", "the request has both Content-Length and Transfer-Encoding")
        scope = request.scope
        raw = (scope.get("raw_path") or quote(scope["path"]).encode()).decode("latin-1")
        try:
            return routing.parse(raw, scope.get("query_string", b"").decode("latin-1"))
        except routing.UrlRefused as e:
            raise CMGError(400, "InvalidUrl", str(e)) from e

    async def handle(request: Request) -> Response:
        route = route_of(request)
        if isinstance(route, routing.ProxyRoute):
            return await proxied(request, route)
        if isinstance(route, routing.AADAuthInfoRoute) and request.method in ("GET", "HEAD"):
            return aad_auth_info(request)
        if isinstance(route, routing.ContentXmlRoute) and request.method in ("GET", "HEAD"):
            return await content_xml(request)
        if isinstance(route, routing.ContentFileRoute) and request.method in ("GET", "HEAD"):
            return await content_file(request, route)
        raise not_found(request.scope["path"])

    # every URL but the /_lab/ routes above (every method, CCM_POST included, as IIS) is `handle`'s; service.py
    # serves it on the lean path (runtime/fastpath.py), past FastAPI's layers
    app.router.routes.append(any_method_route(GATEWAY_URLS, handle))
    app.state.lean_routes = {(ANY, GATEWAY_URLS): handle}
    return app
