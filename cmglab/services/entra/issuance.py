"""What every grant needs: the tenant of the request, the client and its authentication, the resource
(and with it the token version), user sign-in, refresh tokens, and the token response itself.

Each check raises the AADSTS error Entra gives for it (docs/protocol-notes.md, Entra §2.6).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from cmglab.services.entra import store as st
from cmglab.services.entra.discovery import MULTI_TENANT
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.lockout import LOCKED, Lockouts
from cmglab.services.entra.tokens import (
    ACCESS_LIFETIME,
    Issue,
    Principal,
    Resource,
    Signer,
    access_claims,
    client_info,
    id_claims,
)

REFRESH_LIFETIME = 90 * 24 * 3600
OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}
REFRESH_COLUMNS = ("token_hash", "tenant_id", "user_id", "client_id", "device_id", "amr", "created_at", "expires_at")
REFRESH_INSERT_SQL = f"INSERT INTO refresh_tokens ({', '.join(REFRESH_COLUMNS)}) VALUES ({', '.join('?' * 8)})"


def missing(name: str) -> AADSTSError:
    return AADSTSError(900144, "invalid_request", f"The request body must contain the following parameter: '{name}'.")


def require(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not value or not isinstance(value, str):
        raise missing(name)
    return value


@dataclass(frozen=True)
class Client:
    app_id: str
    auth: int  # appidacr: 0 public, 1 secret


def user_principal(user: st.User | st.UserFacts, device_id: str | None = None) -> Principal:
    return Principal(
        "user",
        user.tenant_id,
        user.object_id,
        upn=user.upn,
        name=user.display_name or None,
        onprem_sid=user.onprem_sid,
        device_id=device_id,
    )


class Issuer:
    def __init__(self, store: st.Store, signer: Signer, lockouts: Lockouts) -> None:
        self.store, self.signer, self.lockouts = store, signer, lockouts

    # -- who and what --------------------------------------------------------------------------
    @staticmethod
    def tenant(s: st.Unit, segment: str, error: str = "invalid_request") -> st.TenantInfo | None:
        """The tenant the path names; None for `common`/`organizations` (the user's decides)."""
        if segment.lower() in MULTI_TENANT:
            return None
        tenant = st.tenant_by_key(s, segment)
        if tenant is None:
            raise AADSTSError(
                90002,
                error,
                f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )
        return tenant

    @staticmethod
    def client(s: st.Unit, params: Mapping[str, Any], tenant_name: str) -> Client:
        client_id = require(params, "client_id").lower()
        app = st.app_by_id(s, client_id)
        if app is None:
            raise AADSTSError(
                700016,
                "unauthorized_client",
                f"Application with identifier '{client_id}' was not found in the directory '{tenant_name}'.",
            )
        secret = params.get("client_secret")
        if secret:
            if not st.verify_secret(secret, app.secret_hash):
                raise AADSTSError(7000215, "invalid_client", "Invalid client secret provided.", 401)
            return Client(app.app_id, 1)
        if not app.public_client:
            raise AADSTSError(
                7000218,
                "invalid_client",
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                401,
            )
        return Client(app.app_id, 0)

    @staticmethod
    def resource(s: st.Unit, params: Mapping[str, Any], *, v2: bool, tenant_name: str) -> tuple[Resource, set[str]]:
        """The resource and the OIDC scopes asked for. v1 names it in `resource`; v2 in `scope` as
        `<resource>/.default` or `<resource>/<permission>` (Microsoft Graph when it names none)."""
        oidc: set[str] = set()
        if v2:
            scopes = require(params, "scope").split()
            oidc = {x for x in scopes if x in OIDC_SCOPES}
            bases = {x.rpartition("/")[0] if "/" in x else st.GRAPH_APP_ID for x in scopes if x not in OIDC_SCOPES}
            if len(bases) > 1:
                raise AADSTSError(
                    28000,
                    "invalid_scope",
                    "Provided value for the input parameter scope is not valid because it contains "
                    "more than one resource.",
                )
            requested = bases.pop() if bases else st.GRAPH_APP_ID
        else:
            requested = require(params, "resource")
        app = st.app_by_resource(s, requested)
        if app is None:
            raise AADSTSError(
                500011,
                "invalid_resource",
                f"The resource principal named {requested} was not found in the tenant named "
                f"{tenant_name}. This can happen if the application has not been installed by "
                "the administrator of the tenant.",
            )
        return Resource(app.app_id, requested, app.access_token_version), oidc

    def sign_in(self, s: st.Unit, tenant: st.TenantInfo | None, username: str, password: str) -> st.UserFacts:
        found = st.sign_in_facts(s, username)  # the user and the lockout row: one select in this unit of work
        if found is None or (tenant is not None and found.user.tenant_id != tenant.tenant_id):
            where = tenant.display_name if tenant else username.rpartition("@")[2]
            raise AADSTSError(
                50034,
                "invalid_grant",
                f"The user account {username} does not exist in the {where} directory. To sign "
                "into this application, the account must be added to the directory.",
            )
        user = found.user
        if not user.enabled:
            raise AADSTSError(50057, "invalid_grant", "The user account is disabled.")
        if found.locked_until > st.now():  # smart lockout (lockout.py): refused whatever the password
            raise AADSTSError(50053, "invalid_grant", LOCKED)
        if not st.verify_secret(password, found.password_hash):
            if self.lockouts.failed(user.upn, password):
                raise AADSTSError(50053, "invalid_grant", LOCKED)
            raise AADSTSError(
                50126, "invalid_grant", "Error validating credentials due to invalid username or password."
            )
        if found.lock_failures or found.lock_recent:
            st.reset_lockout(s, user.upn)
        return user

    @staticmethod
    def redeem_refresh(s: Session, token: str, client_id: str, tenant: st.TenantInfo | None) -> st.RefreshToken:
        row = s.get(st.RefreshToken, st.token_hash(token))
        if row is None:
            raise AADSTSError(9002313, "invalid_grant", "Invalid request. Request is malformed or invalid.")
        if row.expires_at < st.now():
            raise AADSTSError(700082, "invalid_grant", "The refresh token has expired due to inactivity.")
        if row.client_id != client_id or (tenant is not None and row.tenant_id != tenant.tenant_id):
            raise AADSTSError(
                70000,
                "invalid_grant",
                "Provided grant is invalid or malformed: the refresh token was issued to another client or tenant.",
            )
        return row

    # -- the reply -----------------------------------------------------------------------------
    def reply(
        self, s: st.Unit, issue: Issue, *, v2: bool, refresh: bool, id_token: bool, with_client_info: bool
    ) -> dict[str, Any]:
        """Entra's token response: v1 with numbers as strings and `resource`, v2 with integers."""
        iat = st.now()
        p, r = issue.principal, issue.resource
        body: dict[str, Any] = {"token_type": "Bearer"}
        if p.kind == "user":
            body["scope"] = f"{r.requested}/user_impersonation" if v2 else "user_impersonation"
        elif v2:
            body["scope"] = f"{r.requested}/.default"
        if v2:
            body.update(expires_in=ACCESS_LIFETIME, ext_expires_in=ACCESS_LIFETIME)
        else:
            body.update(
                expires_in=str(ACCESS_LIFETIME),
                ext_expires_in=str(ACCESS_LIFETIME),
                expires_on=str(iat + ACCESS_LIFETIME),
                not_before=str(iat),
                resource=r.requested,
            )
        body["access_token"] = self.signer.sign(access_claims(issue, iat), v1=r.version == 1)
        # every signature before the refresh token's insert: the insert takes the database's write lock, held
        # until the unit of work commits, and every other writer (the other worker processes) waits for it
        signed_id = self.signer.sign(id_claims(issue, iat, v2=v2), v1=not v2) if p.kind == "user" and id_token else None
        if p.kind == "user" and refresh:
            body["refresh_token"] = self._new_refresh(s, issue)
        if signed_id is not None:
            body["id_token"] = signed_id
        if p.kind == "user" and with_client_info:
            body["client_info"] = client_info(p)
        return body

    @staticmethod
    def _new_refresh(s: st.Unit, issue: Issue) -> str:
        token = "1.A" + secrets.token_urlsafe(96)
        assert issue.client_id is not None
        row = (
            st.token_hash(token),
            issue.principal.tenant_id,
            issue.principal.object_id,
            issue.client_id,
            issue.principal.device_id,
            " ".join(issue.amr),
            st.now(),
            st.now() + REFRESH_LIFETIME,
        )
        # plain SQL, not an ORM object: nothing reads the row back, and the unit of work's flush of one object
        # cost ~0.1 ms of CPU per sign-in
        st.sql_run(s, REFRESH_INSERT_SQL, row)
        return token
