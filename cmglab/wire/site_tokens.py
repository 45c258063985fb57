"""Tokens the ConfigMgr site signs (docs/protocol-notes.md, Lab §3): JWTs, RS256, `x5t` of the site signing cert.

- bulk registration token: the published shape (docs/protocol-notes.md, ConfigMgr §3.3);
- CCM token: what CCM_STS issues, 8 hours, token type UDA (Entra user+device) or Device;
- client unique token: what the MP gives a token-registered client, bound to the thumbprint of its
  self-signed certificate, 90 days, renewed monthly.

The MP issues them; the CMG and the MP verify them. This module is the one place that knows their
shape, so a real format could replace it.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from cmglab.pki.builders import RSAKey, x5t
from cmglab.wire import jwt_peek

AUDIENCE = "urn:sccm:service"
CCM_TOKEN_LIFETIME = timedelta(hours=8)
CLIENT_TOKEN_LIFETIME = timedelta(days=90)
CLIENT_TOKEN_RENEWAL = timedelta(days=30)
BULK_DEFAULT_MINUTES = 4320
BULK_MAX_MINUTES = 10080
LEEWAY = 60

# token "Type" claim values
BULK = "BulkRegistration"
CLIENT = "ClientToken"
UDA = "UDA"  # user + device, from an Entra token that named both
DEVICE = "Device"
CCM_TYPES = (UDA, DEVICE)


class SiteTokenError(Exception):
    """A site token that must be refused; `reason` is what the service logs and answers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(data: bytes) -> bytes:
    """base64url without padding (RFC 7515 §2), as PyJWT encodes each segment."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def issuer(hierarchy_id: str) -> str:
    return f"urn:sccm:oauth2:{hierarchy_id.lower()}"


@dataclass(frozen=True)
class SiteSigner:
    hierarchy_id: str
    key: RSAKey
    cert: x509.Certificate

    @functools.cached_property
    def _header_segment(self) -> bytes:
        """The JWS header every token of this signer carries, encoded once: what PyJWT writes for
        `headers={"typ": "JWT", "x5t": ...}` (its keys sorted, compact separators)."""
        header = {"alg": "RS256", "typ": "JWT", "x5t": x5t(self.cert)}
        return _b64(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())

    def _sign(self, claims: dict[str, Any]) -> str:
        """CLAIMS as an RS256 JWS, the same text as `jwt.encode(claims, key, "RS256", headers={"typ": "JWT", "x5t":
        ...})` (RSA PKCS#1 v1.5 is deterministic: tests/test_site_tokens_sign.py), without PyJWT's per-token
        header building, key preparation and claim checks (the claims are this module's own: strings and ints)."""
        signing_input = self._header_segment + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return (signing_input + b"." + _b64(signature)).decode()

    def _times(self, lifetime: timedelta, now: datetime | None) -> tuple[int, int]:
        start = now or datetime.now(UTC)
        return int(start.timestamp()), int((start + lifetime).timestamp())

    def bulk_token(
        self, *, minutes: int = BULK_DEFAULT_MINUTES, now: datetime | None = None
    ) -> tuple[str, str, datetime, datetime]:
        """A bulk registration token: (token, its GUID, valid from, valid to)."""
        if not 1 <= minutes <= BULK_MAX_MINUTES:
            raise ValueError(f"lifetime must be 1..{BULK_MAX_MINUTES} minutes")
        nbf, exp = self._times(timedelta(minutes=minutes), now)
        unique = str(uuid.uuid4())
        token = self._sign(
            {
                "SCCMTokenCategory": "SCCMPreAuthToken",
                "Authority": "SCCM",
                "License": "SCCM",
                "Type": BULK,
                "TenantId": self.hierarchy_id.upper(),
                "UniqueId": unique,
                "iss": issuer(self.hierarchy_id),
                "aud": AUDIENCE,
                "exp": exp,
                "nbf": nbf,
            }
        )
        return token, unique, _dt(nbf), _dt(exp)

    def ccm_token(
        self,
        *,
        token_type: str,
        sms_id: str | None = None,
        tenant_id: str | None = None,
        user_id: str | None = None,
        device_id: str | None = None,
        user_sid: str | None = None,
        now: datetime | None = None,
        lifetime: timedelta = CCM_TOKEN_LIFETIME,
    ) -> tuple[str, datetime]:
        """A CCM token and its expiry. sms_id is `GUID:...` once the client is registered."""
        if token_type not in CCM_TYPES:
            raise ValueError(f"unknown CCM token type {token_type}")
        nbf, exp = self._times(lifetime, now)
        claims: dict[str, Any] = {
            "SCCMTokenCategory": "SCCMClientAccessToken",
            "Authority": "SCCM",
            "License": "SCCM",
            "Type": token_type,
            "HierarchyId": self.hierarchy_id,
            "UniqueId": str(uuid.uuid4()),
            "iss": issuer(self.hierarchy_id),
            "aud": AUDIENCE,
            "exp": exp,
            "nbf": nbf,
            "iat": nbf,
        }
        optional = {
            "DeviceId": sms_id,
            "AADTenantId": tenant_id,
            "AADUserId": user_id,
            "AADDeviceId": device_id,
            "OnPremUserSid": user_sid,
        }
        claims.update({k: v for k, v in optional.items() if v})
        return self._sign(claims), _dt(exp)

    def client_token(self, *, sms_id: str, cert_thumbprint: str, now: datetime | None = None) -> tuple[str, datetime]:
        """The MP-issued unique token of a token-registered client, bound to its self-signed cert."""
        nbf, exp = self._times(CLIENT_TOKEN_LIFETIME, now)
        token = self._sign(
            {
                "SCCMTokenCategory": "SCCMPreAuthToken",
                "Authority": "SCCM",
                "License": "SCCM",
                "Type": CLIENT,
                "DeviceId": sms_id,
                "CertThumbprint": cert_thumbprint.upper(),
                "UniqueId": str(uuid.uuid4()),
                "iss": issuer(self.hierarchy_id),
                "aud": AUDIENCE,
                "exp": exp,
                "nbf": nbf,
                "iat": nbf,
            }
        )
        return token, _dt(exp)


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a token this site has just signed, read back from its own text (no check: the caller made it)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def verify(
    token: str,
    *,
    cert: x509.Certificate,
    hierarchy_id: str,
    types: tuple[str, ...] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Claims of a site token after checking signature, x5t, issuer, audience, lifetime and type."""
    try:
        header = jwt_peek.header(token)
    except jwt.PyJWTError as e:
        raise SiteTokenError(f"not a JWT: {e}") from e
    if header.get("alg") != "RS256":
        raise SiteTokenError(f"algorithm {header.get('alg')!r} not accepted")
    if header.get("x5t") != x5t(cert):
        raise SiteTokenError("token not signed by this site's signing certificate (x5t)")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            cert.public_key(),  # type: ignore[arg-type]
            algorithms=["RS256"],
            audience=AUDIENCE,
            issuer=issuer(hierarchy_id),
            leeway=LEEWAY,
            options={"require": ["exp", "nbf", "iss", "aud"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError as e:
        raise SiteTokenError("token expired") from e
    except jwt.ImmatureSignatureError as e:
        raise SiteTokenError("token not yet valid") from e
    except jwt.InvalidAudienceError as e:
        raise SiteTokenError("wrong audience") from e
    except jwt.InvalidIssuerError as e:
        raise SiteTokenError("wrong issuer (another hierarchy)") from e
    except jwt.InvalidSignatureError as e:
        raise SiteTokenError("signature does not verify") from e
    except jwt.PyJWTError as e:
        raise SiteTokenError(f"invalid token: {e}") from e
    if now is not None and claims["exp"] < now.timestamp():
        raise SiteTokenError("token expired")
    if types is not None and claims.get("Type") not in types:
        raise SiteTokenError(f"token type {claims.get('Type')!r} not accepted here")
    return claims


class VerifiedTokens:
    """`verify` for one site, remembering what it verified: a client sends the same CCM token with every
    request for hours, and the RSA verification (and the thread hop that keeps it off the event loop) is most
    of what checking it costs. A token seen again is found by its exact text, and its lifetime and type are
    checked again on each use; a token that differs by one byte is a miss and verified in full. Bounded: the
    oldest entries go first, expired ones when met."""

    def __init__(self, cert: x509.Certificate, hierarchy_id: str, size: int = 8192) -> None:
        self.cert, self.hierarchy_id, self.size = cert, hierarchy_id, size
        self._claims: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, token: object) -> bool:
        """Whether this exact text was verified before as this site's token (lifetime and type not checked)."""
        with self._lock:
            return token in self._claims

    def known(self, token: str, types: tuple[str, ...] | None = None) -> dict[str, Any] | None:
        """The claims of a token verified before (lifetime and type checked now), or None if it is not known.
        Raises SiteTokenError as `verify` would for a known token that has expired or is of another type."""
        with self._lock:
            claims = self._claims.get(token)
        if claims is None:
            return None
        now = time.time()
        if claims["exp"] + LEEWAY < now:
            with self._lock:
                self._claims.pop(token, None)
            raise SiteTokenError("token expired")
        if claims["nbf"] - LEEWAY > now:
            raise SiteTokenError("token not yet valid")
        if types is not None and claims.get("Type") not in types:
            raise SiteTokenError(f"token type {claims.get('Type')!r} not accepted here")
        return dict(claims)

    def issued(self, token: str, claims: dict[str, Any] | None = None) -> None:
        """TOKEN, which this site's signer has just made with this cache's certificate, known from its first use:
        its claims read back from its own text (CLAIMS: the caller's reading of that text, `claims_of`), with no
        verification (the signature is this site's own, the claims the ones it signed). Lifetime and type are
        checked on each use, as for a verified token."""
        self._remember(token, claims_of(token) if claims is None else claims)

    def _remember(self, token: str, claims: dict[str, Any]) -> None:
        with self._lock:
            self._claims[token] = dict(claims)
            while len(self._claims) > self.size:
                self._claims.popitem(last=False)

    def verify(self, token: str, types: tuple[str, ...] | None = None) -> dict[str, Any]:
        """`known`, else `verify` in full (then remembered; its type is checked after, as for a known one)."""
        claims = self.known(token, types)
        if claims is not None:
            return claims
        claims = verify(token, cert=self.cert, hierarchy_id=self.hierarchy_id)
        self._remember(token, claims)
        if types is not None and claims.get("Type") not in types:
            raise SiteTokenError(f"token type {claims.get('Type')!r} not accepted here")
        return claims
