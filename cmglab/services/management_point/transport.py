"""HTTP plumbing shared by the MP's routes: IIS-style paths, bounded bodies, who the caller is."""

from __future__ import annotations

import base64
import binascii
import functools
from typing import Any

import jwt
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import Request, Response

from cmglab.pki.builders import x5t
from cmglab.runtime.admin import record
from cmglab.runtime.certinfo import client_cert
from cmglab.runtime.offload import Offload, awake_for_cpus
from cmglab.runtime.windowsauth import unauthorized
from cmglab.services.management_point.admission import ENTRA_VALID, entra_refusal
from cmglab.services.management_point.caller import Caller, cert_subject
from cmglab.services.management_point.errors import HTTPError
from cmglab.services.management_point.parts import Parts
from cmglab.wire import entra_tokens, jwt_peek, site_tokens
from cmglab.wire.kinds import AuthKind, EntraVerdict

Scope = dict[str, Any]

# the MP's message work (its crypto and database) off the event loop, on a pool of its own beside anyio's 40 (not
# bounded by its limiter): the database pool counts both (runtime/db.py SESSION_THREADS), so up to 80 threads
# holding two sessions each never wait for a connection. Only as many of its threads as awake_for_cpus() (the
# worker's CPUs, pinned by the time the pool starts a thread) run at once,
# further work waiting its turn (up to runtime/offload.py's STALL, then it gets a thread of its own): with a thread
# woken for each of 16 connections' requests on one CPU the threads took ~0.18 ms of CPU per policy request against
# dispatch()'s 0.13 ms alone (issue 20)
mp_work = Offload("mp-work", awake=awake_for_cpus)
off_loop = mp_work.run


class IISPaths:
    """IIS matches paths case-insensitively and takes absolute-form request targets
    (`CCM_POST http://mp/ccm_system/request`): route on the lower-cased origin-form path."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            lower = path.lower()
            if lower.startswith(("http://", "https://")):
                rest = path.split("://", 1)[1]
                path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
            if not path.startswith("/_lab/"):
                path = path.lower()
            if path != scope["path"]:
                scope = {**scope, "path": path}
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body larger than {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPError(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


@functools.lru_cache(maxsize=1024)  # once per certificate, as caller.cert_subject
def _same_point(cert: x509.Certificate, expected: x509.Certificate) -> bool:
    return _cn(cert.subject).lower() == _cn(expected.subject).lower() and cert.issuer == expected.issuer


def is_connection_point(mp: Parts, cert: x509.Certificate | None) -> bool:
    """The connection point's client-auth certificate (TLS already chained it to the lab CA)."""
    return cert is not None and _same_point(cert, mp.connection_point_cert)


@functools.lru_cache(maxsize=1024)
def forwarded_client_cert(value: str) -> x509.Certificate:
    """RFC 9440 `Client-Cert: :<base64 DER>:` (parsed once per header text among the latest 1,024)."""
    raw = value.strip()
    if raw.startswith(":") and raw.endswith(":"):
        raw = raw[1:-1]
    try:
        return x509.load_der_x509_certificate(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError) as e:
        raise HTTPError(400, f"bad Client-Cert header: {e}") from e


def caller_of(request: Request, mp: Parts, vdir: str) -> Caller:
    tls_cert = client_cert(request)
    via_cp = is_connection_point(mp, tls_cert)
    pki: x509.Certificate | None = None
    if via_cp:
        header = request.headers.get("client-cert")
        if header:
            pki = forwarded_client_cert(header)
    else:
        pki = tls_cert
    host = (request.headers.get("host") or "").rsplit(":", 1)[0]
    scheme = request.scope.get("scheme", "http")  # request.url.scheme, without building the URL
    caller = Caller(vdir=vdir, scheme=scheme, host=host, pki_cert=pki, via_connection_point=via_cp)
    rec = record(request)
    if pki is not None:
        rec.authenticated(AuthKind.PKI_CERTIFICATE, cert_subject(pki))
    if via_cp:
        rec.via = "connection-point"
    return caller


def bearer(request: Request) -> str | None:
    value = request.headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _target(request: Request) -> str:
    """METHOD PATH for a token check's log line: the scope's path (the exact route's), without building the URL
    Starlette's `request.url` parses (~10 us of the loop's CPU per tokenauth request)."""
    return f"{request.scope['method']} {request.scope['path']}"


def _site_signed(mp: Parts, token: str) -> bool:
    """The token names the site's signing certificate (a CCM token); anything else is taken for an Entra token."""
    try:
        return jwt_peek.header(token).get("x5t") == x5t(mp.signer.cert)
    except jwt.PyJWTError:
        return True  # not a JWT at all: refused by the CCM token check, with its reason


async def require_token(request: Request, mp: Parts, caller: Caller) -> None:
    """`ccm_system_tokenauth`: a CCM token, or an Entra token (seed 001 "Client registration" 2-3: the client
    registers with a fresh Entra token, then asks CCM_STS for its CCM token). An Entra token is validated here:
    any verdict but `valid` is refused with 401 (admission.entra_refusal) before the message is read; a valid one
    is handed on, and the message layer admits it for MP_ClientRegistration only."""
    token = bearer(request)
    # a token verified before as a CCM token is site-signed: no header to parse again
    if token is None or token in mp.ccm_tokens or _site_signed(mp, token):
        await require_ccm_token(request, mp, caller)
        return
    verdict, claims, reason = await entra_verdict(mp, token)
    log = mp.logs.clientauth
    refused = entra_refusal(verdict)
    if refused is not None or claims is None:
        log.warning(f"{_target(request)}: Entra token refused ({verdict}): {reason}")
        raise HTTPError(
            401,
            f"Entra token refused: {refused.reason if refused else verdict}",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    caller.entra_verdict, caller.entra_claims = verdict, claims
    device = str(claims.get("deviceid", "")).lower()
    record(request).authenticated(AuthKind.ENTRA_TOKEN, f"{device} (tenant {claims.get('tid')})")
    log.info(
        f"{_target(request)}: Entra token accepted (tenant {claims.get('tid')}, device {device}, "
        f"audience {claims.get('aud')}): admitted for registration only"
    )


async def entra_verdict(mp: Parts, token: str) -> tuple[EntraVerdict, dict[str, Any] | None, str]:
    """(verdict, claims when valid, reason when not) of an Entra token under the site's one rule
    (`entra_tokens.EntraPolicy`, the MP's copy of Entra's keys): RS256 by an Entra key, its tenant's issuer, not
    expired, its tenant onboarded, its audience THAT tenant's resource URI (AADRESOURCEURI) or server app ID, and
    an Entra device named. The RSA verification runs off the event loop, as for a CCM token."""
    return await off_loop(_entra_verdict_now, mp, token)


def _entra_verdict_now(mp: Parts, token: str) -> tuple[EntraVerdict, dict[str, Any] | None, str]:
    """`entra_verdict` in the calling thread: the rule's read and the verification in one hop."""
    policy = mp.store.entra_policy()
    try:  # a token accepted before under the same rule: known by its text (entra_known.py)
        claims = mp.entra_known.claims_now(policy, mp.entra_keys, token)
    except entra_tokens.EntraTokenError as e:
        return e.kind, None, e.reason
    return ENTRA_VALID, claims, ""


async def require_ccm_token(request: Request, mp: Parts, caller: Caller) -> None:
    """Authorization: Bearer <CCM token> (8-hour token from CCM_STS); 401 otherwise."""
    token = bearer(request)
    log = mp.logs.clientauth
    if token is None:
        log.warning(f"{_target(request)}: no CCM token (Authorization: Bearer) on a token-auth path")
        raise HTTPError(401, "a CCM token is required", headers={"WWW-Authenticate": "Bearer"})
    try:
        # a token verified before is known by its text (no RSA, no thread hop); a new one is verified off the loop
        claims = mp.ccm_tokens.known(token, site_tokens.CCM_TYPES)
        if claims is None:
            claims = await off_loop(mp.ccm_tokens.verify, token, site_tokens.CCM_TYPES)
    except site_tokens.SiteTokenError as e:
        log.warning(f"{_target(request)}: CCM token refused: {e.reason}")
        raise HTTPError(
            401, f"CCM token refused: {e.reason}", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from e
    caller.ccm_claims = claims
    rec = record(request)
    subject = claims.get("DeviceId") or claims.get("AADDeviceId") or claims.get("UniqueId")
    rec.authenticated(AuthKind.CCM_TOKEN, str(subject))
    log.info(f"{_target(request)}: CCM token accepted (type {claims.get('Type')}, device {rec.auth_subject})")


SSL_REQUIRED = (
    "<html><head><title>403 - Forbidden: SSL is required</title></head><body>"
    "<h2>403.4 - Forbidden: SSL is required to view this resource.</h2></body></html>"
)


async def refused_http(request: Request, mp: Parts, caller: Caller) -> Response | None:
    """Site setting "HTTPS only" (Communication Security): the MP's vdirs require SSL, 403.4 over HTTP."""
    if caller.scheme != "http" or not (await off_loop(mp.store.site_settings)).https_only:
        return None
    mp.logs.isapi.warning(f"{request.method} {request.url.path} over HTTP refused: the site is HTTPS only (403.4)")
    record(request).result = "refused: HTTPS only"
    return Response(SSL_REQUIRED, status_code=403, media_type="text/html")


async def windows_logon(mp: Parts, request: Request) -> tuple[str | None, Response | None]:
    """IIS Windows authentication of a `*_windowsauth` request: (account, None) or (None, the 401)."""
    step = await mp.windows.login(request)
    if not step.done:
        if step.error:
            mp.logs.clientauth.warning(f"Windows authentication failed on {request.url.path}: {step.error}")
        return None, unauthorized(step.headers)
    rec = record(request)
    rec.authenticated(AuthKind.WINDOWS, step.account)
    if not step.persisted:
        mp.logs.clientauth.info(f"Windows authentication succeeded for {step.account}")
    return step.account, None
