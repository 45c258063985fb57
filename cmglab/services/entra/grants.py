"""The token endpoint's grants (docs/protocol-notes.md, Entra §2.3): password, client_credentials,
refresh_token, device_code, srv_challenge, and the device-certificate-signed `jwt-bearer` request
(inner grants `device_token`, `password`, `refresh_token`) that gives device tokens and device-bound
user tokens.

Runs in a worker thread (database and RSA work); raises `AADSTSError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from sqlalchemy.orm import Session

from cmglab.core.labconfig import DRS_RESOURCE
from cmglab.services.entra import store as st
from cmglab.services.entra.device_code import DEVICE_CODE_GRANT, DeviceCodes
from cmglab.services.entra.drs import DeviceCA
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.federation import FederatedComputer, FederationKey, computer_claims, redeem_assertion
from cmglab.services.entra.issuance import Issuer, require, user_principal
from cmglab.services.entra.prt import Prts, wants_prt
from cmglab.services.entra.registration import DRS_APP_ID
from cmglab.services.entra.tokens import Issue, Principal, service_principal_id
from cmglab.wire import jwt_peek
from cmglab.wire.kinds import AuthKind

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SAML11_GRANT = "urn:ietf:params:oauth:grant-type:saml1_1-bearer"
NONCE_LIFETIME = 300  # a srv_challenge nonce is good for one request within five minutes


@dataclass(frozen=True)
class TokenRequest:
    segment: str  # the tenant segment of the path
    v2: bool  # /oauth2/v2.0/token
    form: Mapping[str, str]
    ipaddr: str | None


@dataclass
class TokenResult:
    body: dict[str, Any]
    auth_kind: AuthKind
    auth_subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    jwe: str | None = None  # a reply encrypted with a PRT session key, sent as it is instead of `body`


class Grants:
    def __init__(self, issuer: Issuer, device_ca: DeviceCA, device_codes: DeviceCodes, federation_dir: Path) -> None:
        self.issuer, self.store, self.device_ca, self.device_codes = issuer, issuer.store, device_ca, device_codes
        self.prts = Prts(issuer)
        self.federation_key = FederationKey(federation_dir)
        self.handlers: dict[str, Callable[[Session, TokenRequest], TokenResult]] = {
            "client_credentials": self._client_credentials,
            "refresh_token": self._refresh_token,
            DEVICE_CODE_GRANT: self._device_code,
            "authorization_code": self._authorization_code,
            SAML11_GRANT: self._saml,
        }

    def token(self, req: TokenRequest) -> TokenResult:
        grant = require(req.form, "grant_type")
        if grant == "srv_challenge":  # no tenant or client: a nonce for a signed request to come
            return TokenResult({"Nonce": self.store.issue_nonce(NONCE_LIFETIME)}, AuthKind.SRV_CHALLENGE)
        if grant == JWT_BEARER:  # its units of work are its own (a device token needs no session)
            return self._device_signed(req)
        if grant == "password":
            return self._password(req)
        handler = self.handlers.get(grant)
        if handler is None:
            raise AADSTSError(
                70003, "unsupported_grant_type", f"The app requested an unsupported grant type '{grant}'."
            )
        with self.store.session() as s:
            return handler(s, req)

    # -- grants --------------------------------------------------------------------------------
    def _password(self, req: TokenRequest) -> TokenResult:
        """ROPC in one plain-SQL unit of work: its reads, the lockout count's reset after a right password and the
        refresh token's row are fixed statements (~0.4 ms of CPU per sign-in less than an ORM session, A/B), all
        committed together when the reply is made, none if anything fails."""
        with self.store.plain() as u:
            tenant = self.issuer.tenant(u, req.segment)
            client = self.issuer.client(u, req.form, req.segment)
            resource, oidc = self.issuer.resource(u, req.form, v2=req.v2, tenant_name=req.segment)
            user = self.issuer.sign_in(u, tenant, require(req.form, "username"), require(req.form, "password"))
            issue = Issue(user_principal(user), resource, client.app_id, client.auth, ("pwd",), req.ipaddr)
            return TokenResult(self._user_reply(u, issue, req, oidc), AuthKind.PASSWORD, user.upn)

    def _client_credentials(self, s: Session, req: TokenRequest) -> TokenResult:
        tenant = self.issuer.tenant(s, req.segment)
        if tenant is None:
            raise AADSTSError(
                9001023,
                "invalid_request",
                "The grant type isn't supported over the /common or /consumers endpoints. "
                "Please use the /organizations or tenant-specific endpoint.",
            )
        client = self.issuer.client(s, req.form, tenant.tenant_id)
        if client.auth == 0:
            raise AADSTSError(
                7000218,
                "invalid_client",
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                401,
            )
        resource, _ = self.issuer.resource(s, req.form, v2=req.v2, tenant_name=tenant.tenant_id)
        sp = Principal("app", tenant.tenant_id, service_principal_id(tenant.tenant_id, client.app_id))
        issue = Issue(sp, resource, client.app_id, client.auth, (), req.ipaddr)
        body = self.issuer.reply(s, issue, v2=req.v2, refresh=False, id_token=False, with_client_info=False)
        return TokenResult(body, AuthKind.CLIENT_CREDENTIALS, client.app_id)

    def _refresh_token(self, s: Session, req: TokenRequest) -> TokenResult:
        tenant = self.issuer.tenant(s, req.segment)
        client = self.issuer.client(s, req.form, req.segment)
        row = self.issuer.redeem_refresh(s, require(req.form, "refresh_token"), client.app_id, tenant)
        resource, oidc = self.issuer.resource(s, req.form, v2=req.v2, tenant_name=req.segment)
        user = s.get(st.User, row.user_id)
        assert user is not None  # refresh tokens go with their user (cascade)
        issue = Issue(
            user_principal(user, row.device_id),
            resource,
            client.app_id,
            client.auth,
            tuple(row.amr.split()),
            req.ipaddr,
        )
        return TokenResult(self._user_reply(s, issue, req, oidc), AuthKind.REFRESH_TOKEN, user.upn)

    def _device_code(self, s: Session, req: TokenRequest) -> TokenResult:
        client = self.issuer.client(s, req.form, req.segment)
        # v1 polls with `code`, v2 with `device_code`
        code = req.form.get("device_code") or req.form.get("code") or ""
        pending = self.device_codes.redeem(s, code, client.app_id, v2=req.v2)
        user = s.get(st.User, pending.user_id)
        assert user is not None
        params = {"scope": pending.scope} if req.v2 else {"resource": pending.resource}
        resource, oidc = self.issuer.resource(s, params, v2=req.v2, tenant_name=user.tenant_id)
        issue = Issue(user_principal(user), resource, client.app_id, client.auth, ("pwd",), req.ipaddr)
        return TokenResult(self._user_reply(s, issue, req, oidc), AuthKind.DEVICE_CODE, user.upn)

    def _saml(self, s: Session, req: TokenRequest) -> TokenResult:
        """A SAML 1.1 assertion from a federated domain's STS (MSAL/roadlib's WS-Trust flow)."""
        tenant = self.issuer.tenant(s, req.segment)
        client = self.issuer.client(s, req.form, req.segment)
        resource, oidc = self.issuer.resource(s, req.form, v2=req.v2, tenant_name=req.segment)
        fed = redeem_assertion(s, self.federation_key, require(req.form, "assertion"), tenant)
        if isinstance(fed, FederatedComputer):  # a federated hybrid join's computer: a DRS token only
            if resource.requested.lower() != DRS_RESOURCE.lower() and resource.app_id != DRS_APP_ID:
                raise AADSTSError(
                    500011, "invalid_resource", "A domain computer's token is for the device registration service only."
                )
            iat = st.now()
            token = self.issuer.signer.sign(computer_claims(fed, resource.requested, client.app_id, iat), v1=True)
            body = {
                "token_type": "Bearer",
                "expires_in": "3599",
                "ext_expires_in": "3599",
                "expires_on": str(iat + 3599),
                "not_before": str(iat),
                "resource": resource.requested,
                "access_token": token,
            }
            return TokenResult(body, AuthKind.SAML, fed.object_guid)
        issue = Issue(user_principal(fed.user), resource, client.app_id, client.auth, fed.amr, req.ipaddr)
        return TokenResult(self._user_reply(s, issue, req, oidc), AuthKind.SAML, fed.user.upn)

    def _authorization_code(self, s: Session, req: TokenRequest) -> TokenResult:
        body, upn = self.prts.redeem_code(s, dict(req.form), req.segment, req.v2, req.ipaddr)
        return TokenResult(body, AuthKind.AUTHORIZATION_CODE, upn)

    def _user_reply(self, s: st.Unit, issue: Issue, req: TokenRequest, oidc: set[str]) -> dict[str, Any]:
        """v1 always returns a refresh and an ID token to a user; v2 when offline_access/openid were asked."""
        return self.issuer.reply(
            s,
            issue,
            v2=req.v2,
            refresh=not req.v2 or "offline_access" in oidc,
            id_token=not req.v2 or "openid" in oidc,
            with_client_info=req.form.get("client_info") == "1",
        )

    # -- the device-certificate-signed request -------------------------------------------------
    def _device_signed(self, req: TokenRequest) -> TokenResult:
        """`request` is a JWS signed by the device key, its certificate in the `x5c` header; its payload
        carries a fresh srv_challenge nonce and an inner grant."""
        request = require(req.form, "request")
        header = jws_header(request)
        if _session_key_signed(header):  # a request made with a PRT ([MS-OAPXBC] 3.1.5.1.3)
            with self.store.session() as s:
                jwe, use, kind = self.prts.signed_request(s, request, req.segment, req.ipaddr)
                return TokenResult({}, kind, use.user.upn, {"device_id": use.row.device_id}, jwe=jwe)
        # the device's checks and a device token read a few fixed rows and write none: a plain-SQL unit, not a
        # session (~0.2 ms of CPU less per device token); a user's sign-in goes on in a session
        with self.store.plain() as u:
            payload, device = self._verify_device_request(u, request, header, req.segment)
            inner = require(payload, "grant_type")
            tenant = st.tenant_by_id(u, device.tenant_id)
            assert tenant is not None
            if inner == "device_token":
                resource, _ = self.issuer.resource(u, payload, v2=req.v2, tenant_name=tenant.tenant_id)
                require(payload, "client_id")
                principal = Principal(
                    "device",
                    device.tenant_id,
                    device.object_id,
                    onprem_sid=device.onprem_sid,
                    device_id=device.device_id,
                )
                issue = Issue(principal, resource, None, 2, ("rsa",), req.ipaddr)
                # a device token reply is v1-shaped whatever the endpoint, without refresh or ID token
                body = self.issuer.reply(u, issue, v2=False, refresh=False, id_token=False, with_client_info=False)
                return TokenResult(body, AuthKind.DEVICE_TOKEN, device.device_id)
            if inner == "password":  # CloudAP's sign-in: its reads and its one row (PRT or refresh) are fixed too
                return self._device_signed_user(u, req, payload, device, tenant, inner)
        with self.store.session() as s:
            return self._device_signed_user(s, req, payload, device, tenant, inner)

    def _device_signed_user(
        self,
        s: st.Unit,
        req: TokenRequest,
        payload: dict[str, Any],
        device: st.DeviceFacts,
        tenant: st.TenantInfo,
        inner: str,
    ) -> TokenResult:
        """A device-signed request's user grant (password, refresh token, SAML assertion): a PRT or user tokens."""
        if inner not in ("password", "refresh_token", SAML11_GRANT):
            raise AADSTSError(
                70003,
                "unsupported_grant_type",
                f"The app requested an unsupported grant type '{inner}' in the signed request.",
            )
        client = self.issuer.client(s, payload, tenant.tenant_id)
        user: st.User | st.UserFacts
        if inner == "password":
            user = self.issuer.sign_in(s, tenant, require(payload, "username"), require(payload, "password"))
            amr: tuple[str, ...] = ("pwd", "rsa")
        elif inner == SAML11_GRANT:  # a federated user's sign-in ([MS-OAPXBC] 3.1.5.1.2.1)
            assert isinstance(s, Session)  # a plain unit is given for the password grant only
            fed = redeem_assertion(s, self.federation_key, require(payload, "assertion"), tenant)
            if isinstance(fed, FederatedComputer):
                raise AADSTSError(
                    50008,
                    "invalid_grant",
                    "A primary refresh token is for a user: the SAML assertion names a computer.",
                )
            user, amr = fed.user, (*fed.amr, "rsa")
        else:
            assert isinstance(s, Session)  # a plain unit is given for the password grant only
            row = self.issuer.redeem_refresh(s, require(payload, "refresh_token"), client.app_id, tenant)
            found = s.get(st.User, row.user_id)
            assert found is not None
            user, amr = found, tuple(dict.fromkeys([*row.amr.split(), "rsa"]))
        if wants_prt(payload):  # scope "openid aza ugs": a primary refresh token ([MS-OAPXBC] 3.1.5.1.2)
            body = self.prts.issue(s, user=user, device=device, amr=amr, client_id=client.app_id, ipaddr=req.ipaddr)
            return TokenResult(body, AuthKind(f"prt_{inner}"), user.upn, {"device_id": device.device_id})
        resource, oidc = self.issuer.resource(s, payload, v2=req.v2, tenant_name=tenant.tenant_id)
        issue = Issue(user_principal(user, device.device_id), resource, client.app_id, client.auth, amr, req.ipaddr)
        return TokenResult(
            self._user_reply(s, issue, req, oidc),
            AuthKind(f"device_{inner}"),
            user.upn,
            {"device_id": device.device_id},
        )

    def _verify_device_request(
        self, s: st.Plain, request: str, header: dict[str, Any] | None, segment: str
    ) -> tuple[dict[str, Any], st.DeviceFacts]:
        try:
            if header is None:
                raise ValueError("not a JWS")
            x5c = header.get("x5c")
            text = x5c[0] if isinstance(x5c, list) else x5c or ""
            if not isinstance(text, str):
                raise TypeError("x5c is not base64 text")
            # read and its CA signature verified once per certificate (kept by its text); its validity, the
            # request's signature, the device row and the nonce are checked on every request
            cert = self.device_ca.signed.get(text)
        except (jwt.PyJWTError, binascii.Error, ValueError, TypeError, IndexError) as e:
            raise AADSTSError(
                50027,
                "invalid_request",
                "JWT token is invalid or malformed: the request must be a JWS with the device "
                "certificate in its x5c header.",
            ) from e
        if cert is None or not cert.valid(datetime.now(UTC)):
            raise AADSTSError(
                50155,
                "invalid_grant",
                "Device authentication failed: the certificate is not a valid device certificate "
                "issued by MS-Organization-Access.",
            )
        try:
            payload: dict[str, Any] = jwt_peek.decode(  # jwt.decode without its per-character scan
                request,
                cert.public_key,
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_iss": False},
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as e:
            raise AADSTSError(
                50013, "invalid_grant", "Assertion is invalid: it is not within its valid time range."
            ) from e
        except jwt.InvalidSignatureError:
            raise AADSTSError(
                50155,
                "invalid_grant",
                "Device authentication failed: the request signature does not verify with the device certificate.",
            ) from None
        except jwt.DecodeError as e:  # a payload or signature segment that is not base64url JSON
            raise AADSTSError(50027, "invalid_request", "JWT token is invalid or malformed.") from e
        except jwt.PyJWTError as e:
            raise AADSTSError(
                50155,
                "invalid_grant",
                "Device authentication failed: the request signature does not verify with the device certificate.",
            ) from e
        device = st.device_facts(s, cert.device_id or "")
        tenant = self.issuer.tenant(s, segment)
        if (
            device is None
            or not device.enabled
            or device.cert_thumbprint != cert.thumbprint
            or (tenant is not None and tenant.tenant_id != device.tenant_id)
        ):
            raise AADSTSError(
                700003, "invalid_grant", f"Device object was not found in the tenant '{segment}' directory."
            )
        nonce = require(payload, "request_nonce")
        # committed now, on this unit's connection: a failure later still spends the nonce
        if not self.store.consume_nonce(nonce, s):
            raise AADSTSError(
                50013,
                "invalid_grant",
                "Assertion is invalid: the request nonce is unknown, expired or already used.",
            )
        return payload, device


BASE64URL_SEGMENT = re.compile(r"[A-Za-z0-9_-]*={0,2}")


_KNOWN_HEADERS = jwt_peek.KnownHeaders()  # a device's requests share one header (its certificate in x5c)


def jws_header(request: str) -> dict[str, Any] | None:
    """The (unverified) JOSE header of a compact JWS, None when it is not one; it only picks the verifier and
    its key: PyJWT's decode then parses and checks the whole request. Decoded once per request here, instead of
    by PyJWT's get_unverified_header twice, which checks every character of every segment in Python (~0.15 ms
    for a request with a certificate in its header), and once per header text: a header seen before is known by
    its exact text (~0.02 ms for a device's ~2.5 KB header)."""
    segment = request.partition(".")[0]
    if len(segment.rstrip("=")) % 4 == 1 or not BASE64URL_SEGMENT.fullmatch(segment):
        return None
    key = segment.encode("ascii")  # the pattern holds ASCII only
    known = _KNOWN_HEADERS.get(key)
    if known is not None:
        return known
    try:
        header = json.loads(base64.urlsafe_b64decode(segment.rstrip("=") + "=" * (-len(segment.rstrip("=")) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    _KNOWN_HEADERS.add(key, header)
    return header


def _session_key_signed(header: dict[str, Any] | None) -> bool:
    """An HS256 request with a `ctx` header is signed with a PRT session key, not the device key."""
    return header is not None and header.get("alg") == "HS256" and "ctx" in header and "x5c" not in header
