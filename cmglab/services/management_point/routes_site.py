"""`POST /CCM_STS`, `GET /CCM_Cloud/config` (connection point only), `/CCM_Client/<file>`."""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from cmglab.runtime.admin import record
from cmglab.runtime.client_package import FILES, package_dir
from cmglab.runtime.client_package import manifest as package_manifest
from cmglab.services.management_point.errors import HTTPError, STSError
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.sts import STSRequest, TokenService
from cmglab.services.management_point.transport import bearer, caller_of, off_loop, read_body, require_ccm_token
from cmglab.wire import jsonlimits
from cmglab.wire.cloud_config import CloudConfig, CloudContent, OnboardedTenant, PublishedEndpoint
from cmglab.wire.kinds import AuthKind

CLOUD_PATHS = [
    "CCM_STS",
    "ccm_system/request",
    "ccm_system_tokenauth/request",
    "ccm_system_altauth/request",
    "SMS_MP",
    "SMS_MP_TokenAuth",
    "CCM_Client",
]


def cloud_config(mp: Parts) -> CloudConfig:
    site = mp.lab.config.site
    settings = mp.store.site_settings()
    allow = settings.allow_cmg
    endpoints = (
        {str(site.role_id): PublishedEndpoint(internal_url=mp.lab.url("management-point"), paths=CLOUD_PATHS)}
        if allow
        else {}
    )
    tenants = [
        OnboardedTenant(
            tenant_id=t["tenant_id"],
            client_app_id=t["client_app_id"],
            resource_uri=t["resource_uri"],
            server_app_id=t["server_app_id"],
            authority=f"https://login.microsoftonline.com/{t['tenant_id']}",
        )
        for t in mp.store.tenants(onboarded_only=True)
    ]
    try:
        version = int(package_manifest(mp.lab).get("version", 1))
    except (OSError, ValueError):
        version = 1
    return CloudConfig(
        site_code=site.code,
        allow_cmg=allow,
        endpoints=endpoints,
        tenants=tenants,
        content=CloudContent(package_id=site.client_package_id, version=version, enabled=settings.content_enabled_cmg),
    )


def sts_handler(mp: Parts, sts: TokenService) -> Callable[[Request], Awaitable[Response]]:
    """`POST /CCM_STS`: the one handler behind the FastAPI route and the lean path (fastpath.py)."""

    async def ccm_sts(request: Request) -> Response:
        caller = caller_of(request, mp, "ccm_sts")
        if caller.scheme != "https":
            mp.logs.sts.warning(f"Refused a CCM_STS request over {caller.scheme}: the token service is HTTPS only")
            raise STSError(403, "InvalidRequest", "CCM_STS is served over HTTPS only")
        raw = await read_body(request, 1024 * 1024)
        try:
            doc = jsonlimits.loads(raw or b"null")  # nesting bounded before parsing (RecursionError: a 500)
        except (ValueError, UnicodeDecodeError) as e:
            mp.logs.sts.warning("ProcessRequest - the request body is not JSON")
            raise STSError(400, "InvalidRequest", "the request body is not JSON") from e
        req = STSRequest.from_json(doc, bearer(request))
        url = f"https://{request.headers.get('host', mp.fqdn)}/CCM_STS"
        reply = await sts.process(req, caller, url)
        record(request).auth_kind = AuthKind.of_proof(req.proof_type)
        return JSONResponse(reply)

    return ccm_sts


def _head_of(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


class ClientFile(FileResponse):
    """A client package file: FileResponse, except that a whole small file (a plain GET, under one chunk) is read
    in one thread hop and sent as one message, where FileResponse takes anyio's three (open, read, close; ~0.1 ms
    of CPU each when the worker sleeps between requests, as in a fleet) and a task group watching for the
    client's disconnect. HEAD, ranges and larger files are FileResponse's own; the headers are always its."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.stat_result
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or found is None
            or found.st_size >= self.chunk_size
            or Headers(scope=scope).get("range") is not None
        ):
            await super().__call__(scope, receive, send)
            return
        body = await off_loop(_head_of, Path(self.path), self.chunk_size)
        if len(body) >= self.chunk_size:  # it grew since its stat: streamed as FileResponse streams it
            await super().__call__(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def client_file_handler(mp: Parts) -> Callable[[Request], Awaitable[Response]]:
    """`GET /CCM_Client/<file>`: the client package (the FastAPI route's and the lean path's one handler)."""
    allowed = (*FILES, "manifest.json")

    async def ccm_client(request: Request) -> Response:
        name = request.path_params["name"]
        caller = caller_of(request, mp, "ccm_client")
        if bearer(request) is not None or (caller.via_connection_point and caller.pki_cert is None):
            await require_ccm_token(request, mp, caller)
        if name not in allowed:
            raise HTTPError(404, "no such file in the client package")
        path = package_dir(mp.lab) / name
        try:  # the file's stat handed to FileResponse: one look at the file instead of two (and no thread hop)
            found = path.stat()
        except FileNotFoundError:
            found = None
        if found is None or not stat.S_ISREG(found.st_mode):
            raise HTTPError(404, "the client package has not been distributed")
        return ClientFile(path, media_type="application/octet-stream", stat_result=found)

    return ccm_client


def router(mp: Parts, sts: TokenService) -> APIRouter:
    r = APIRouter()
    r.add_api_route("/ccm_sts", sts_handler(mp, sts), methods=["POST"], include_in_schema=False)

    @r.get("/ccm_cloud/config", include_in_schema=False)
    async def ccm_cloud_config(request: Request) -> Response:
        caller = caller_of(request, mp, "ccm_cloud")
        if not caller.via_connection_point:
            raise HTTPError(403, "only a CMG connection point of this site may read the cloud configuration")
        return JSONResponse((await run_in_threadpool(cloud_config, mp)).model_dump())

    r.add_api_route("/ccm_client/{name}", client_file_handler(mp), methods=["GET", "HEAD"], include_in_schema=False)
    return r
