"""Primary refresh tokens ([MS-OAPXBC]; the wire format ROADtools roadlib speaks, docs/protocol-notes.md, Entra §2.3).

- Issuance (3.1.5.1.2): a device-certificate-signed jwt-bearer request whose inner grant is `password` or
  `refresh_token` and whose scope holds `aza` returns a PRT (`token_type: pop`, `refresh_token`,
  `refresh_token_expires_in` 14 days), `session_key_jwe` (the session key RSA-OAEP-encrypted to the
  device's registered transport key) and an ID token. No resource is asked for and none is issued.
- Use (3.1.5.1.3): a jwt-bearer `request` signed HS256 with a key derived from the session key (the header's
  `ctx`, `kdf_ver`) and carrying the PRT as `refresh_token`; a fresh srv_challenge nonce in
  `request_nonce`. With `aza` in the scope it renews the PRT (same session key, new token, the old one
  retired); otherwise it gives the client's tokens (an access token when a resource is named). The reply
  is a JWE encrypted with a key derived from the session key.
- PRT cookies (3.1.5.2.1.3, 3.2.5.2.1.1.1): `x-ms-RefreshTokenCredential` at the authorize endpoint, signed
  the same way, carrying the PRT and a nonce; it signs the user in without a prompt (an authorization code).

Every refusal is an AADSTSError, raised before anything is written; a spent nonce stays spent.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy import delete
from sqlalchemy.orm import Session

from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.issuance import Issuer, require, user_principal
from cmglab.services.entra.tokens import Issue, Resource, client_info, id_claims
from cmglab.wire import prt_crypto
from cmglab.wire.kinds import AuthKind

PRT_LIFETIME = 14 * 24 * 3600  # refresh_token_expires_in: Windows renews every 4 hours of use
PRT_COLUMNS = ("token_hash", "tenant_id", "user_id", "device_id", "session_key", "amr", "issued_at", "expires_at")
PRT_INSERT_SQL = f"INSERT INTO primary_refresh_tokens ({', '.join(PRT_COLUMNS)}) VALUES ({', '.join('?' * 8)})"
CODE_LIFETIME = 600
PRT_SCOPE = "aza"


def wants_prt(payload: dict[str, Any]) -> bool:
    scope = payload.get("scope")
    return isinstance(scope, str) and PRT_SCOPE in scope.split()


def malformed(detail: str) -> AADSTSError:
    return AADSTSError(50027, "invalid_request", f"JWT token is invalid or malformed: {detail}")


@dataclass(frozen=True)
class PrtUse:
    """A verified use of a PRT: its row, its user and the request's (or cookie's) payload."""

    row: st.PrimaryRefreshToken
    user: st.User
    payload: dict[str, Any]


class Prts:
    def __init__(self, issuer: Issuer) -> None:
        self.issuer, self.store = issuer, issuer.store

    # -- issuance ------------------------------------------------------------------------------
    def issue(
        self,
        s: st.Unit,
        *,
        user: st.User | st.UserFacts,
        device: st.Device | st.DeviceFacts,
        amr: tuple[str, ...],
        client_id: str,
        ipaddr: str | None,
        session_key: bytes | None = None,
    ) -> dict[str, Any]:
        """A new PRT for (user, device) and the reply that carries it. A renewal passes the session key it
        keeps; a first issuance makes one and encrypts it to the device's transport key."""
        reply: dict[str, Any] = {"token_type": "pop"}
        if session_key is None:
            if not device.transport_key:
                raise AADSTSError(
                    50155, "invalid_grant", "Device authentication failed: the device has no transport key registered."
                )
            transport = load_der_public_key(device.transport_key)
            assert isinstance(transport, rsa.RSAPublicKey)  # the DRS accepts RSA transport keys only
            session_key = prt_crypto.new_session_key()
            reply["session_key_jwe"] = prt_crypto.seal_session_key(session_key, transport)
        token = "0.A" + secrets.token_urlsafe(128)  # roadlib takes a PRT without a '.' for base64
        now = st.now()
        row = (
            st.token_hash(token),
            user.tenant_id,
            user.object_id,
            device.device_id,
            session_key,
            " ".join(amr),
            now,
            now + PRT_LIFETIME,
        )
        principal = user_principal(user, device.device_id)
        issue = Issue(principal, Resource(client_id, client_id, 1), client_id, 0, amr, ipaddr)
        id_token = self.issuer.signer.sign(id_claims(issue, now, v2=False), v1=True)
        # the row after the signature: on SQLite its insert takes the store's write lock until the unit commits
        # (runtime/sqlite_writes.py), and no writer should wait out an RSA signature
        st.sql_run(s, PRT_INSERT_SQL, row)  # plain SQL: nothing reads the row back in this unit of work
        reply.update(
            refresh_token=token,
            refresh_token_expires_in=PRT_LIFETIME,
            id_token=id_token,
            client_info=client_info(principal),
        )
        return reply

    # -- verification --------------------------------------------------------------------------
    def verify_signed(self, s: Session, token: str, segment: str, *, cookie: bool = False) -> PrtUse:
        """A session-key-signed JWT (request or cookie): the PRT it names, its signature, its nonce, the
        device and the tenant. The nonce is spent before any later check can fail."""
        try:
            header, payload = prt_crypto.signed_parts(token)
            prt_crypto.kdf_version(header)
        except prt_crypto.PrtCryptoError as e:
            if "kdf_ver" in str(e):
                raise AADSTSError(
                    5000611,
                    "invalid_request",
                    f"Symmetric Key Derivation Function version '{header.get('kdf_ver')}' is "
                    "invalid. Update the device for the latest updates.",
                ) from e
            raise malformed(str(e)) from e
        prt = payload.get("refresh_token")
        if not isinstance(prt, str) or not prt:
            raise AADSTSError(
                900144, "invalid_request", "The request body must contain the following parameter: 'refresh_token'."
            )
        row = s.get(st.PrimaryRefreshToken, st.token_hash(prt))
        if row is None:
            raise AADSTSError(
                9002313,
                "invalid_grant",
                "Invalid request. Request is malformed or invalid: the "
                "primary refresh token is unknown or was renewed.",
            )
        try:
            verified = prt_crypto.verify(token, row.session_key)
        except prt_crypto.PrtCryptoError as e:
            raise AADSTSError(
                50155,
                "invalid_grant",
                "Device authentication failed: the request is not signed "
                "with the session key of the primary refresh token.",
            ) from e
        nonce = verified.get("request_nonce")
        if not isinstance(nonce, str) or not nonce:
            raise AADSTSError(
                900144, "invalid_request", "The request body must contain the following parameter: 'request_nonce'."
            )
        if not self.store.consume_nonce(nonce):  # committed now: a failure later still spends the nonce
            raise AADSTSError(
                50013,
                "invalid_grant",
                "Assertion is invalid: the request nonce is unknown, expired or already used.",
            )
        if row.expires_at < st.now():
            raise AADSTSError(700082, "invalid_grant", "The refresh token has expired due to inactivity.")
        tenant = self.issuer.tenant(s, segment)
        if tenant is not None and tenant.tenant_id != row.tenant_id:
            raise AADSTSError(
                70000,
                "invalid_grant",
                "Provided grant is invalid or malformed: the primary "
                f"refresh token was issued by another tenant than '{segment}'.",
            )
        device = st.device_by_id(s, row.device_id)
        if device is None or device.tenant_id != row.tenant_id:
            raise AADSTSError(
                700003,
                "invalid_grant",
                "Device object was not found in the tenant directory: the device the primary "
                "refresh token is bound to was deleted.",
            )
        if not device.enabled:
            raise AADSTSError(135011, "invalid_grant", "Device used during the authentication is disabled.")
        user = s.get(st.User, row.user_id)
        if user is None or not user.enabled:
            raise AADSTSError(50057, "invalid_grant", "The user account is disabled.")
        return PrtUse(row, user, verified)

    # -- use -----------------------------------------------------------------------------------
    def signed_request(
        self, s: Session, request: str, segment: str, ipaddr: str | None
    ) -> tuple[str, PrtUse, AuthKind]:
        """A token request signed with the session key: (the encrypted reply, the use, what it was)."""
        use = self.verify_signed(s, request, segment)
        payload, row = use.payload, use.row
        grant = payload.get("grant_type")
        if grant != "refresh_token":
            raise AADSTSError(
                70003,
                "unsupported_grant_type",
                f"The app requested an unsupported grant type '{grant}' in the signed request.",
            )
        client = self.issuer.client(s, payload, row.tenant_id)
        amr = tuple(row.amr.split())
        device = st.device_by_id(s, row.device_id)
        assert device is not None  # verify_signed checked it
        if wants_prt(payload):
            body = self.issue(
                s,
                user=use.user,
                device=device,
                amr=amr,
                client_id=client.app_id,
                ipaddr=ipaddr,
                session_key=row.session_key,
            )
            s.delete(row)  # the renewed PRT replaces it
            kind = AuthKind.PRT_RENEW
        else:
            principal = user_principal(use.user, row.device_id)
            if payload.get("resource"):
                resource, _ = self.issuer.resource(s, payload, v2=False, tenant_name=row.tenant_id)
                issue = Issue(principal, resource, client.app_id, client.auth, amr, ipaddr)
                body = self.issuer.reply(s, issue, v2=False, refresh=True, id_token=True, with_client_info=True)
            else:  # an ID token and a refresh token only (roadlib: "resource is optional")
                issue = Issue(
                    principal, Resource(client.app_id, client.app_id, 1), client.app_id, client.auth, amr, ipaddr
                )
                body = {
                    "token_type": "Bearer",
                    "refresh_token": self.issuer._new_refresh(s, issue),
                    "id_token": self.issuer.signer.sign(id_claims(issue, st.now(), v2=False), v1=True),
                    "client_info": client_info(principal),
                }
            kind = AuthKind.PRT_TOKEN
        return prt_crypto.encrypt_reply(json.dumps(body).encode(), row.session_key), use, kind

    # -- PRT cookies at the authorize endpoint ------------------------------------------------------
    def authorize(self, cookie: str, segment: str, client_id: str, redirect_uri: str) -> tuple[str, PrtUse]:
        """An authorization code for the user and device the cookie proves."""
        with self.store.session() as s:
            use = self.verify_signed(s, cookie, segment, cookie=True)
            client = self.issuer.client(s, {"client_id": client_id}, use.row.tenant_id)
            code = "0.A" + secrets.token_urlsafe(64)
            s.add(
                st.AuthorizationCode(
                    code_hash=st.token_hash(code),
                    tenant_id=use.row.tenant_id,
                    user_id=use.user.object_id,
                    device_id=use.row.device_id,
                    client_id=client.app_id,
                    redirect_uri=redirect_uri,
                    amr=use.row.amr,
                    expires_at=st.now() + CODE_LIFETIME,
                )
            )
        return code, use

    def redeem_code(
        self, s: Session, form: dict[str, str], segment: str, v2: bool, ipaddr: str | None
    ) -> tuple[dict[str, Any], str]:
        """grant_type=authorization_code: the code is single use (the delete is the use)."""
        code = require(form, "code")
        client = self.issuer.client(s, form, segment)
        row = s.get(st.AuthorizationCode, st.token_hash(code))
        with self.store.session() as own:
            spent = own.execute(
                delete(st.AuthorizationCode).where(st.AuthorizationCode.code_hash == st.token_hash(code))
            )
        if row is None or not spent.rowcount or row.expires_at < st.now():  # type: ignore[attr-defined]
            raise AADSTSError(
                70008,
                "invalid_grant",
                "The provided authorization code or refresh token has "
                "expired due to inactivity or was already redeemed.",
            )
        if row.client_id != client.app_id or row.redirect_uri != form.get("redirect_uri", ""):
            raise AADSTSError(
                70000,
                "invalid_grant",
                "Provided grant is invalid or malformed: the code was issued to another client or redirect URI.",
            )
        tenant = self.issuer.tenant(s, segment)
        if tenant is not None and tenant.tenant_id != row.tenant_id:
            raise AADSTSError(
                70000, "invalid_grant", "Provided grant is invalid or malformed: the code was issued by another tenant."
            )
        user = s.get(st.User, row.user_id)
        assert user is not None
        resource, oidc = self.issuer.resource(s, form, v2=v2, tenant_name=row.tenant_id)
        issue = Issue(
            user_principal(user, row.device_id), resource, client.app_id, client.auth, tuple(row.amr.split()), ipaddr
        )
        body = self.issuer.reply(
            s,
            issue,
            v2=v2,
            refresh=not v2 or "offline_access" in oidc,
            id_token=not v2 or "openid" in oidc,
            with_client_info=form.get("client_info") == "1",
        )
        return body, user.upn
