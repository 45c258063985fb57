"""The device's primary refresh token, as CloudAP and WAM keep and use it ([MS-OAPXBC] 3.1.5.1.2, 3.1.5.1.3).

- At join and at user sign-in the device asks for a PRT with the user's password in a request signed by
  the device key (scope `openid aza ugs`, no resource); the session key comes back encrypted to the
  transport key and is unwrapped with it.
- The PRT and its session key are kept sealed (the DPAPI stand-in, purpose "PRT"), never in clear.
- Tokens for apps are asked for with the PRT in requests signed with a key derived from the session key;
  the replies are JWEs under it. The PRT is renewed on use when it is 4 hours old (what Windows does),
  never more often.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.agent.device import Device
from cmglab.agent.entra import OS_VERSION, EntraClient, EntraError, TokenReply, _error, _token_reply
from cmglab.pki.builders import cert_der
from cmglab.wire import prt_crypto

PRT_PURPOSE = "PRT"
WINDOWS_SIGN_IN = "38aa3b87-a06d-4817-b275-7a316988d93b"  # the client CloudAP asks for a PRT as
PRT_SCOPE = "openid aza ugs"
RENEW_AFTER = 4 * 3600
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class PrtRecord:
    refresh_token: str
    session_key: str  # hex
    tenant_id: str
    upn: str
    authority: str  # https://login.microsoftonline.com/<tid>
    updated_at: int
    expires_at: int
    object_id: str = ""  # the user's, from the ID token of the PRT reply
    onprem_sid: str | None = None

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.session_key)


def prt_path(device: Device) -> Any:
    return device.aad_dir / "prt.bin"


def load(device: Device) -> PrtRecord | None:
    value = device.dpapi.load(prt_path(device), PRT_PURPOSE)
    return PrtRecord(**value) if isinstance(value, dict) else None


def save(device: Device, record: PrtRecord) -> None:
    device.dpapi.save(prt_path(device), asdict(record), PRT_PURPOSE)


def forget(device: Device) -> None:
    prt_path(device).unlink(missing_ok=True)


def valid(record: PrtRecord | None, now: float | None = None) -> bool:
    return record is not None and record.expires_at > (now or time.time())


class PrtClient:
    def __init__(self, entra: EntraClient) -> None:
        self.entra, self.http = entra, entra.http

    def _post(self, tenant: str, form: dict[str, str], what: str) -> httpx.Response:
        reply = self.http.post(f"{self.entra.login}/{tenant}/oauth2/token", data=form)
        if reply.status_code != 200:
            raise _error(reply, what)
        return reply

    def acquire(
        self,
        tenant: str,
        cert: x509.Certificate,
        key: rsa.RSAPrivateKey,
        transport_key: rsa.RSAPrivateKey,
        *,
        username: str,
        password: str | None = None,
        assertion: str | None = None,
    ) -> PrtRecord:
        """A PRT for the user who signs in, with the device key's signature ([MS-OAPXBC] 3.1.5.1.2.1): with
        the password (managed domain) or the federation service's SAML assertion (federated domain)."""
        payload: dict[str, Any] = {
            "client_id": WINDOWS_SIGN_IN,
            "request_nonce": self.entra.nonce(tenant),
            "scope": PRT_SCOPE,
            "group_sids": [],
            "win_ver": OS_VERSION,
        }
        if assertion is not None:
            payload.update(
                grant_type="urn:ietf:params:oauth:grant-type:saml1_1-bearer",
                assertion=base64.b64encode(assertion.encode()).decode(),
            )
        else:
            payload.update(grant_type="password", username=username, password=password or "")
        x5c = base64.b64encode(cert_der(cert)).decode()
        request = jwt.encode(payload, key, algorithm="RS256", headers={"typ": "JWT", "x5c": x5c, "kdf_ver": 2})
        body = self._post(
            tenant,
            {"windows_api_version": "2.2", "grant_type": JWT_BEARER, "request": request, "client_info": "1"},
            "PRT request",
        ).json()
        try:
            session_key = prt_crypto.open_session_key(body["session_key_jwe"], transport_key)
            token, lifetime = str(body["refresh_token"]), int(body["refresh_token_expires_in"])
            claims = jwt.decode(body["id_token"], options={"verify_signature": False})
        except (KeyError, ValueError, TypeError, jwt.PyJWTError) as e:
            raise EntraError(f"PRT reply is not usable: {e}") from e
        tid, now = str(claims.get("tid", "")), int(time.time())
        return PrtRecord(
            token,
            session_key.hex(),
            tid,
            username,
            f"{self.entra.login}/{tid}",
            now,
            now + lifetime,
            str(claims.get("oid", "")),
            claims.get("onprem_sid"),
        )

    def _signed(self, record: PrtRecord, payload: dict[str, Any], what: str) -> dict[str, Any]:
        payload = {
            "refresh_token": record.refresh_token,
            "request_nonce": self.entra.nonce(record.tenant_id),
            "win_ver": OS_VERSION,
            **payload,
        }
        request = prt_crypto.sign(payload, record.key)
        reply = self._post(
            record.tenant_id,
            {"windows_api_version": "2.2", "grant_type": JWT_BEARER, "request": request, "client_info": "1"},
            what,
        )
        try:
            body: dict[str, Any] = json.loads(prt_crypto.decrypt_reply(reply.text, record.key))
        except (prt_crypto.PrtCryptoError, ValueError) as e:
            raise EntraError(f"{what}: the reply does not decrypt with the session key: {e}") from e
        return body

    def renew(self, record: PrtRecord) -> PrtRecord:
        body = self._signed(
            record,
            {
                "client_id": WINDOWS_SIGN_IN,
                "scope": PRT_SCOPE,
                "grant_type": "refresh_token",
                "iss": "aad:brokerplugin",
                "previous_refresh_token": record.refresh_token,
            },
            "PRT renewal",
        )
        now = int(time.time())
        return PrtRecord(
            str(body["refresh_token"]),
            record.session_key,
            record.tenant_id,
            record.upn,
            record.authority,
            now,
            now + int(body.get("refresh_token_expires_in", 0)),
            record.object_id,
            record.onprem_sid,
        )

    def token(self, record: PrtRecord, *, client_id: str, resource: str) -> TokenReply:
        body = self._signed(
            record,
            {
                "client_id": client_id,
                "resource": resource,
                "scope": "openid",
                "grant_type": "refresh_token",
                "iss": "aad:brokerplugin",
                "redirect_uri": f"ms-appx-web://Microsoft.AAD.BrokerPlugin/{client_id}",
            },
            "token with the PRT",
        )
        return _token_reply(body)


def fresh(device: Device, client: PrtClient, record: PrtRecord, now: float | None = None) -> PrtRecord:
    """The PRT, renewed first when it is RENEW_AFTER old (and stored sealed again)."""
    if (now or time.time()) - record.updated_at < RENEW_AFTER:
        return record
    renewed = client.renew(record)
    save(device, renewed)
    return renewed
