"""Entra-shaped JWTs: the signing key and JWKS, and the claims of access and ID tokens.

Claims follow docs/protocol-notes.md, Entra §2.5: v1 tokens (`ver` 1.0, issuer `https://sts.windows.net/<tid>/`,
`appid`, `upn`, `unique_name`, `amr`) for resources that accept v1 (the default, as for
`https://ConfigMgrService`), v2 tokens for resources set to version 2. Device tokens carry the device
object ID as `oid` and the device ID as `sub` and `deviceid`; user tokens obtained with a device
certificate add `deviceid` and `rsa` to `amr`. `idtyp` says user, app or device.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.pki.builders import cert_der, x5t
from cmglab.wire import jwt_peek

V1_ISSUER = "https://sts.windows.net/{tid}/"
V2_ISSUER = "https://login.microsoftonline.com/{tid}/v2.0"
ACCESS_LIFETIME = 3599
VERIFY_LEEWAY = 60  # seconds of clock skew allowed on a presented token's lifetime
VERIFIED_TOKENS = 4096  # how many verified tokens a signer remembers by their text
# service principal object IDs are derived, stable per (tenant, app)
SP_NAMESPACE = uuid.UUID("7b1d9c2e-5d0a-4c59-9a44-2f5d4a3f7e10")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _opaque() -> str:
    """Stand-ins for Entra's opaque claims (aio, rh, uti)."""
    return b64url(secrets.token_bytes(16))


def service_principal_id(tenant_id: str, app_id: str) -> str:
    return str(uuid.uuid5(SP_NAMESPACE, f"{tenant_id}:{app_id}"))


class Signer:
    """The token-signing certificate and key; `kid` = `x5t` = base64url(SHA-1(DER))."""

    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        self.key, self.cert, self.kid = key, cert, x5t(cert)
        self.public_key = key.public_key()  # derived once, not per verification
        # tokens verified before, by their exact text: (the audiences asked for, the claims)
        self._verified: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def sign(self, claims: dict[str, Any], *, v1: bool) -> str:
        headers = {"typ": "JWT", "kid": self.kid, **({"x5t": self.kid} if v1 else {})}
        return jwt.encode(claims, self.key, algorithm="RS256", headers=headers)

    def verify(self, token: str, *, audience: list[str]) -> dict[str, Any]:
        """Claims of a token this signer issued (signature, audience, lifetime); raises PyJWTError.

        A token verified before for the same audiences is known by its exact text (the signature, the audience and
        the claims' shapes cannot have changed) and only its lifetime is checked again, as PyJWT checks it: a
        user's DRS token is sent with each of its joins for an hour, and PyJWT's reading of it costs ~0.1 ms of
        CPU beyond the RSA verification (issue 20). A token that differs by one character is verified in full."""
        audiences = tuple(audience)
        with self._lock:
            known = self._verified.get(token)
        if known is not None and known[0] == audiences:
            seen = known[1]
            now = time.time()
            if int(seen["exp"]) <= now - VERIFY_LEEWAY:
                with self._lock:
                    self._verified.pop(token, None)
                raise jwt.ExpiredSignatureError("Signature has expired")
            for name in ("nbf", "iat"):  # Entra's own are in the past once verified; checked as PyJWT does
                if name in seen and int(seen[name]) > now + VERIFY_LEEWAY:
                    raise jwt.ImmatureSignatureError(f"The token is not yet valid ({name})")
            return dict(seen)
        claims: dict[str, Any] = jwt_peek.decode(  # jwt.decode without its per-character scan
            token,
            self.public_key,
            algorithms=["RS256"],
            audience=audience,
            options={"require": ["exp", "tid", "iss"]},
            leeway=VERIFY_LEEWAY,
        )
        with self._lock:
            if len(self._verified) >= VERIFIED_TOKENS:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = (audiences, dict(claims))
        return claims

    def jwk(self, issuer: str | None = None) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()

        def as_b64(n: int) -> str:
            return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        key: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": as_b64(numbers.n),
            "e": as_b64(numbers.e),
            "x5c": [base64.b64encode(cert_der(self.cert)).decode()],
        }
        if issuer is not None:
            key.update(issuer=issuer, cloud_instance_name="microsoftonline.com")
        return key


@dataclass(frozen=True)
class Principal:
    """Who a token is about: a user, an app (its service principal) or a device."""

    kind: Literal["user", "app", "device"]
    tenant_id: str
    object_id: str
    upn: str | None = None
    name: str | None = None
    onprem_sid: str | None = None
    device_id: str | None = None  # the device the token is bound to (device tokens, device-bound users)


@dataclass(frozen=True)
class Resource:
    app_id: str
    requested: str  # as the client named it: the v1 `aud`
    version: int


@dataclass(frozen=True)
class Issue:
    """Everything a token response is made from."""

    principal: Principal
    resource: Resource
    client_id: str | None  # None for device tokens
    client_auth: int  # appidacr: 0 public client, 1 secret, 2 certificate
    amr: tuple[str, ...]
    ipaddr: str | None


def _pairwise_sub(object_id: str, client_id: str | None) -> str:
    return b64url(hashlib.sha256(f"{object_id}:{client_id}".encode()).digest())


def access_claims(issue: Issue, iat: int) -> dict[str, Any]:
    p, r = issue.principal, issue.resource
    v1 = r.version == 1
    claims: dict[str, Any] = {
        "aud": r.requested if v1 else r.app_id,
        "iss": (V1_ISSUER if v1 else V2_ISSUER).format(tid=p.tenant_id),
        "iat": iat,
        "nbf": iat,
        "exp": iat + ACCESS_LIFETIME,
        "aio": _opaque(),
    }
    if p.kind != "app":
        claims["amr"] = list(issue.amr)
    if issue.client_id is not None:
        if v1:
            claims.update(appid=issue.client_id, appidacr=str(issue.client_auth))
        else:
            claims.update(azp=issue.client_id, azpacr=str(issue.client_auth))
    if p.device_id:
        claims["deviceid"] = p.device_id
    if p.kind != "user":
        claims["idp"] = V1_ISSUER.format(tid=p.tenant_id)
    claims["idtyp"] = p.kind
    if issue.ipaddr and p.kind != "app":
        claims["ipaddr"] = issue.ipaddr
    if p.name:
        claims["name"] = p.name
    claims["oid"] = p.object_id
    if p.onprem_sid:
        claims["onprem_sid"] = p.onprem_sid
    if p.kind == "user" and not v1:
        claims["preferred_username"] = p.upn
    claims["rh"] = _opaque()
    if p.kind == "user":
        claims["scp"] = "user_impersonation"
    claims["sub"] = {"user": _pairwise_sub(p.object_id, issue.client_id), "app": p.object_id, "device": p.device_id}[
        p.kind
    ]
    claims["tid"] = p.tenant_id
    if p.kind == "user" and v1:
        claims.update(unique_name=p.upn, upn=p.upn)
    claims.update(uti=_opaque(), ver="1.0" if v1 else "2.0")
    return claims


def id_claims(issue: Issue, iat: int, *, v2: bool) -> dict[str, Any]:
    p = issue.principal
    claims: dict[str, Any] = {
        "aud": issue.client_id,
        "iss": (V2_ISSUER if v2 else V1_ISSUER).format(tid=p.tenant_id),
        "iat": iat,
        "nbf": iat,
        "exp": iat + ACCESS_LIFETIME,
        "name": p.name,
        "oid": p.object_id,
        "sub": _pairwise_sub(p.object_id, issue.client_id),
        "tid": p.tenant_id,
    }
    if v2:
        claims.update(preferred_username=p.upn, ver="2.0")
    else:
        claims.update(amr=list(issue.amr), unique_name=p.upn, upn=p.upn, ver="1.0")
        if p.onprem_sid:
            claims["onprem_sid"] = p.onprem_sid
    return claims


def client_info(p: Principal) -> str:
    """What MSAL keys its cache on: base64url of {"uid": oid, "utid": tid}."""
    return b64url(json.dumps({"uid": p.object_id, "utid": p.tenant_id}).encode())
