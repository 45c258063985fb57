"""The device authorization grant (docs/protocol-notes.md, Entra §2.4): `/oauth2/devicecode` and
`/oauth2/v2.0/devicecode` hand out a device code and a user code; the user signs in at the lab's
`/devicelogin` page (the real service's microsoft.com/devicelogin); the client polls the token endpoint.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.issuance import Issuer, missing

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
LIFETIME = 900
INTERVAL = 5
USER_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class DeviceCodes:
    def __init__(self, issuer: Issuer) -> None:
        self.issuer, self.store = issuer, issuer.store

    def start(self, segment: str, params: Mapping[str, str], *, v2: bool, verification_url: str) -> dict[str, Any]:
        with self.store.session() as s:
            tenant = self.issuer.tenant(s, segment)
            client = self.issuer.client(s, params, segment)
            self.issuer.resource(s, params, v2=v2, tenant_name=segment)  # fail now, not at the poll
            s.execute(delete(st.DeviceCode).where(st.DeviceCode.expires_at < st.now()))
            s.execute(delete(st.DeviceCodePoll).where(st.DeviceCodePoll.last_poll < st.now() - LIFETIME))
            device_code = "DAQABAAEAAA" + secrets.token_urlsafe(96)
            user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(9))
            s.add(
                st.DeviceCode(
                    code_hash=st.token_hash(device_code),
                    user_code=user_code,
                    tenant_key=tenant.tenant_id if tenant else segment.lower(),
                    client_id=client.app_id,
                    resource=params.get("resource"),
                    scope=params.get("scope"),
                    expires_at=st.now() + LIFETIME,
                )
            )
        message = (
            f"To sign in, use a web browser to open the page {verification_url} and enter the code "
            f"{user_code} to authenticate."
        )
        if v2:
            return {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": verification_url,
                "expires_in": LIFETIME,
                "interval": INTERVAL,
                "message": message,
            }
        return {
            "user_code": user_code,
            "device_code": device_code,
            "verification_url": verification_url,
            "expires_in": str(LIFETIME),
            "interval": str(INTERVAL),
            "message": message,
        }

    def sign_in(self, user_code: str, username: str, password: str) -> str:
        """The user enters the code and signs in: the code is approved for that user (their UPN back)."""
        with self.store.session() as s:
            row = s.scalar(select(st.DeviceCode).where(st.DeviceCode.user_code == user_code.strip().upper()))
            if row is None or row.expires_at < st.now():
                raise AADSTSError(70018, "bad_verification_code", "The code you entered is not valid or has expired.")
            tenant = st.tenant_by_key(s, row.tenant_key)  # None for common/organizations
            user = self.issuer.sign_in(s, tenant, username, password)
            row.user_id = user.object_id
            return user.upn

    def _too_soon(self, code_hash: str) -> bool:
        """Record this pending poll in a transaction of its own (the poll's own rolls back with its error);
        True when it came sooner than the interval after the previous one."""
        now = time.time()
        with self.store.session() as s:
            row = s.get(st.DeviceCodePoll, code_hash)
            if row is None:
                s.add(st.DeviceCodePoll(code_hash=code_hash, last_poll=now))
                return False
            last, row.last_poll = row.last_poll, now
            return now - last < INTERVAL

    def redeem(self, s: Session, device_code: str, client_id: str, *, v2: bool) -> st.DeviceCode:
        """The approved code, spent; Entra's polling errors otherwise."""
        if not device_code:
            raise missing("device_code" if v2 else "code")
        row = s.get(st.DeviceCode, st.token_hash(device_code))
        if row is None or row.client_id != client_id:
            raise AADSTSError(
                70000, "invalid_grant", "The provided value for the input parameter 'device_code' is not valid."
            )
        if row.expires_at < st.now():
            raise AADSTSError(70019, "expired_token" if v2 else "code_expired", "Verification code expired.")
        if row.user_id is None:
            if self._too_soon(row.code_hash):  # RFC 8628 §3.5: polled faster than the interval
                raise AADSTSError(
                    70016,
                    "slow_down",
                    "OAuth 2.0 device flow error. Polling too fast: wait the "
                    f"interval ({INTERVAL} s) between requests.",
                )
            raise AADSTSError(
                70016,
                "authorization_pending",
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            )
        s.delete(row)
        return row
