"""Validation of Entra access tokens by the site's services (the CMG and the MP's CCM_STS).

Keys come from Entra's JWKS over HTTPS (`https://login.microsoftonline.com/common/discovery/keys`,
reached through the lab mapping), cached by `kid` and fetched again when an unknown `kid` appears
(at most once every few seconds, so a flood of forged kids cannot hammer Entra).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography import x509
from jwt import PyJWK

from cmglab.pki.builders import x5t
from cmglab.wire import jwt_peek
from cmglab.wire.kinds import EntraVerdict

LEEWAY = 300  # Entra tolerates 5 minutes of clock skew
REFETCH_INTERVAL = 5.0


# why a token was refused (`EntraTokenError.kind`): what the MP's registration admission decides on
MALFORMED, FORGED, EXPIRED = EntraVerdict.MALFORMED, EntraVerdict.FORGED, EntraVerdict.EXPIRED
WRONG_AUDIENCE, WRONG_ISSUER = EntraVerdict.WRONG_AUDIENCE, EntraVerdict.WRONG_ISSUER
OTHER_TENANT, UNAVAILABLE = EntraVerdict.OTHER_TENANT, EntraVerdict.UNAVAILABLE
NO_DEVICE = EntraVerdict.NO_DEVICE


class EntraTokenError(Exception):
    def __init__(self, reason: str, kind: EntraVerdict = FORGED) -> None:
        super().__init__(reason)
        self.reason, self.kind = reason, kind


class EntraKeys:
    """Entra's signing keys by `kid`: fetched from the JWKS URL, or (`from_certificates`) the copy of
    the tenant's signing certificates a site keeps — the MP sits on the internal network with no
    route to Entra, as in the compose lab, so it validates with the keys the site synchronised."""

    def __init__(self, client: httpx.AsyncClient | None, jwks_url: str | None) -> None:
        self.client, self.jwks_url = client, jwks_url
        self.keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def from_certificates(cls, certs: list[x509.Certificate]) -> EntraKeys:
        keys = cls(None, None)
        keys.keys = {x5t(c): c.public_key() for c in certs}
        return keys

    async def key(self, kid: str) -> Any:
        if kid in self.keys:
            return self.keys[kid]
        async with self._lock:
            if (
                self.client is not None
                and kid not in self.keys
                and time.monotonic() - self._fetched_at > REFETCH_INTERVAL
            ):
                await self._fetch()
        if kid not in self.keys:
            raise EntraTokenError(f"signing key {kid!r} is not one of Entra's keys", FORGED)
        return self.keys[kid]

    async def _fetch(self) -> None:
        assert self.client is not None and self.jwks_url is not None
        self._fetched_at = time.monotonic()
        try:
            reply = await self.client.get(self.jwks_url)
            reply.raise_for_status()
            doc = reply.json()
        except (httpx.HTTPError, ValueError) as e:
            raise EntraTokenError(f"could not fetch Entra keys from {self.jwks_url}: {e}", UNAVAILABLE) from e
        self.keys = {k["kid"]: PyJWK(k).key for k in doc.get("keys", []) if "kid" in k}

    async def validate(
        self, token: str, *, audiences: list[str] | None, tenants: set[str] | None = None, off_loop: bool = False
    ) -> dict[str, Any]:
        """Claims of an Entra token: RS256 signature by an Entra key, Entra issuer matching `tid`,
        one of `audiences` (None: the `aud` claim must be present but the caller binds it), lifetime,
        and (when given) a tenant in `tenants`. `off_loop`: the RSA verification runs in a worker
        thread (a service that must keep its event loop free)."""
        header, unverified = _peek(token)
        key = await self.key(str(header.get("kid") or header.get("x5t") or ""))
        if off_loop:
            return await asyncio.to_thread(_checked, token, key, unverified, audiences, tenants)
        return _checked(token, key, unverified, audiences, tenants)

    def validate_now(
        self, token: str, *, audiences: list[str] | None, tenants: set[str] | None = None
    ) -> dict[str, Any]:
        """`validate` in the calling thread, for keys that are never fetched (`from_certificates`, the MP's):
        the same checks, errors and order, with no await, so that a worker thread can check a token and go on
        with the request's work in the same hop."""
        if self.client is not None:
            raise TypeError("validate_now needs keys that are never fetched (EntraKeys.from_certificates)")
        header, unverified = _peek(token)
        kid = str(header.get("kid") or header.get("x5t") or "")
        if kid not in self.keys:
            raise EntraTokenError(f"signing key {kid!r} is not one of Entra's keys", FORGED)
        return _checked(token, self.keys[kid], unverified, audiences, tenants)


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unverified header and claims of an RS256 token; EntraTokenError for anything else."""
    try:  # header and claims in one parse, without PyJWT's per-character scan (jwt_peek; PyJWT's error otherwise)
        header, unverified = jwt_peek.header_and_claims(token)
    except jwt.PyJWTError as e:
        raise EntraTokenError(f"not a JWT: {e}", MALFORMED) from e
    if header.get("alg") != "RS256":
        raise EntraTokenError(f"algorithm {header.get('alg')!r} not accepted", FORGED)
    return header, unverified


def _checked(
    token: str, key: Any, unverified: dict[str, Any], audiences: list[str] | None, tenants: set[str] | None
) -> dict[str, Any]:
    """The verified claims of TOKEN under KEY (`EntraKeys.validate`'s checks after the key is found)."""
    tid = str(unverified.get("tid", ""))
    issuers = [f"https://sts.windows.net/{tid}/", f"https://login.microsoftonline.com/{tid}/v2.0"]
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=audiences,
            issuer=issuers,
            leeway=LEEWAY,
            options={"require": ["exp", "iss", "aud", "tid"], "verify_aud": audiences is not None},
        )
    except jwt.ExpiredSignatureError as e:
        raise EntraTokenError("Entra token expired", EXPIRED) from e
    except jwt.InvalidAudienceError as e:
        raise EntraTokenError(
            f"Entra token audience {unverified.get('aud')!r} is not {audiences}", WRONG_AUDIENCE
        ) from e
    except jwt.InvalidIssuerError as e:
        raise EntraTokenError(
            f"Entra token issuer {unverified.get('iss')!r} does not match its tenant", WRONG_ISSUER
        ) from e
    except jwt.PyJWTError as e:
        raise EntraTokenError(f"Entra token rejected: {e}", FORGED) from e
    if tenants is not None and tid.lower() not in tenants:
        raise EntraTokenError(f"tenant {tid} is not onboarded to this site", OTHER_TENANT)
    return claims


@dataclass(frozen=True)
class TenantAudience:
    """What an onboarded tenant's tokens must be issued for: the resource URI (AADRESOURCEURI, v1 tokens)
    or the server app ID (v2 tokens) of the server app onboarded in THAT tenant."""

    resource_uri: str
    server_app_id: str = ""

    def admits(self, aud: Any) -> bool:
        auds = [aud] if isinstance(aud, str) else list(aud or [])
        mine = {a for a in (self.resource_uri, self.server_app_id) if a}
        return bool(auds) and all(a in mine for a in auds)


@dataclass(frozen=True)
class EntraPolicy:
    """The site's one acceptance rule for an Entra token, applied at every door (the CMG, the MP's CCM_STS AAD
    proof, the MP's registration over ccm_system_tokenauth): RS256 by an Entra key, the issuer of its `tid`,
    not expired, its tenant onboarded (a key of `tenants`, lower-case), its audience bound to THAT tenant
    (a token of tenant A carrying tenant B's resource URI is refused, even with both onboarded), and a
    `deviceid` when `require_device`. Refusals raise `EntraTokenError` with its `kind`."""

    tenants: Mapping[str, TenantAudience]
    require_device: bool = True

    async def claims(self, keys: EntraKeys, token: str, *, off_loop: bool = False) -> dict[str, Any]:
        # order matters for what the admin is told: signature, issuer and lifetime first (no audience), then
        # "tenant not onboarded" (seed 003/004's 403), then the audience of THAT tenant
        return self._bound(await keys.validate(token, audiences=None, tenants=set(self.tenants), off_loop=off_loop))

    def claims_now(self, keys: EntraKeys, token: str) -> dict[str, Any]:
        """`claims` in the calling thread (`EntraKeys.validate_now`: keys that are never fetched)."""
        return self._bound(keys.validate_now(token, audiences=None, tenants=set(self.tenants)))

    def _bound(self, claims: dict[str, Any]) -> dict[str, Any]:
        """CLAIMS, verified, if their audience is their own tenant's and a device is named as required."""
        tid = str(claims["tid"]).lower()
        if not self.tenants[tid].admits(claims.get("aud")):
            raise EntraTokenError(
                f"Entra token audience {claims.get('aud')!r} is not tenant {tid}'s resource URI or server app ID",
                WRONG_AUDIENCE,
            )
        if self.require_device and not claims.get("deviceid"):
            raise EntraTokenError("the Entra token names no device (deviceid claim)", NO_DEVICE)
        return claims
