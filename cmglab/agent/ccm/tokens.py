"""CCM tokens: what CCM_STS issues for a proof (docs/architecture.md "CCM_STS"), the encrypted cache
(`Cached encrypted token for 'S-1-5-18'. Will expire at ...`) and the MP-issued unique client token
(90 days, renewed monthly) of a token-registered client. The bulk registration token is only ever an
argument here: it is never cached or logged."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from cmglab.agent.ccm.state import ManagementPoint
from cmglab.agent.certstore import StoredCert
from cmglab.agent.device import SYSTEM_SID, Device
from cmglab.agent.network import classify
from cmglab.wire.ccm_messaging import parse_timestamp, sign_hex, utc_timestamp, utf16
from cmglab.wire.kinds import Proof

CACHE_PURPOSE = "CCM token cache"
CLIENT_TOKEN_PURPOSE = "CCM client unique token"
RENEW_MARGIN = timedelta(minutes=30)  # "already expired or close to expire"
CLIENT_TOKEN_RENEWAL = timedelta(days=30)  # the unique token is renewed monthly


class StsError(Exception):
    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}" if code else reason)
        self.status, self.code, self.reason = status, code, reason


def local_time(when: datetime) -> str:
    return when.astimezone().strftime("%m/%d/%Y %H:%M:%S")


def error_of(reply: httpx.Response) -> StsError:
    try:
        body = reply.json()
    except ValueError:
        body = {}
    return StsError(
        reply.status_code,
        str(body.get("Error", f"HTTP{reply.status_code}")),
        str(body.get("Reason", reply.text[:200] or reply.reason_phrase)),
    )


class TokenCache:
    def __init__(self, device: Device) -> None:
        self.device = device

    def _all(self) -> dict[str, Any]:
        value = self.device.dpapi.load(self.device.token_cache_path, CACHE_PURPOSE)
        return value if isinstance(value, dict) else {}

    def get(self, account: str = SYSTEM_SID) -> dict[str, Any] | None:
        entry = self._all().get(account)
        return entry if isinstance(entry, dict) else None

    def expires(self, account: str = SYSTEM_SID) -> datetime | None:
        entry = self.get(account)
        return parse_timestamp(entry["ExpiresOn"]) if entry else None

    def put(self, reply: dict[str, Any], proof: str, account: str = SYSTEM_SID) -> datetime:
        entries = self._all()
        entries[account] = {
            "Token": reply["Token"],
            "TokenType": reply.get("TokenType"),
            "ExpiresOn": reply["ExpiresOn"],
            "Proof": proof,
        }
        self.device.dpapi.save(self.device.token_cache_path, entries, CACHE_PURPOSE)
        return parse_timestamp(reply["ExpiresOn"])

    def clear(self) -> None:
        self.device.token_cache_path.unlink(missing_ok=True)

    def valid(self, account: str = SYSTEM_SID, margin: timedelta = RENEW_MARGIN) -> str | None:
        entry = self.get(account)
        if entry is None:
            return None
        if parse_timestamp(entry["ExpiresOn"]) - margin <= datetime.now(UTC):
            return None
        return str(entry["Token"])


class ClientTokenStore:
    """The MP-issued unique token, paired with the SMS Signing certificate."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def get(self) -> dict[str, Any] | None:
        value = self.device.dpapi.load(self.device.client_token_path, CLIENT_TOKEN_PURPOSE)
        return value if isinstance(value, dict) else None

    def put(self, token: str, expires: str | None = None) -> None:
        import jwt

        claims = jwt.decode(token, options={"verify_signature": False})
        issued = datetime.fromtimestamp(int(claims.get("iat", claims.get("nbf", 0))), UTC)
        exp = expires or datetime.fromtimestamp(int(claims["exp"]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.device.dpapi.save(
            self.device.client_token_path,
            {"Token": token, "IssuedAt": utc_timestamp(issued), "ExpiresOn": exp},
            CLIENT_TOKEN_PURPOSE,
        )

    def due_for_renewal(self) -> bool:
        entry = self.get()
        return entry is not None and datetime.now(UTC) - parse_timestamp(entry["IssuedAt"]) >= CLIENT_TOKEN_RENEWAL

    def clear(self) -> None:
        self.device.client_token_path.unlink(missing_ok=True)


def request_ccm_token(
    http: httpx.Client,
    mp: ManagementPoint,
    *,
    proof_type: Proof,
    bearer: str | None,
    signing: StoredCert,
    client_id: str | None,
    log: logging.Logger,
    renew_client_token: bool = False,
    shown_url: str | None = None,
) -> dict[str, Any]:
    """POST CCM_STS with a proof; the reply {"Token", "TokenType", "ExpiresOn"[, "ClientToken", ...]}.
    `shown_url`: the URL the log names, when it is not the one posted to (ccmsetup, seed 001 §3.1)."""
    url = mp.url("CCM_STS") if mp.internet else f"https://{mp.host}{_https_port(mp)}/CCM_STS"
    log.info(f"Getting CCM Token from STS server '{mp.name}'")
    log.info(f"Getting CCM Token from {shown_url or url}")
    stamp = utc_timestamp()
    body: dict[str, Any] = {
        "ProofType": proof_type,
        "ClientId": client_id,
        "Certificate": signing.cert().public_bytes(_der()).hex().upper(),
        "Timestamp": stamp,
    }
    if bearer is not None:
        body["Signature"] = sign_hex(signing.key(), utf16(f"{bearer};{stamp}"))
    if renew_client_token:
        body["RenewClientToken"] = True
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        reply = http.post(url, json=body, headers=headers)
    except httpx.HTTPError as e:
        err = classify(e)
        log.error(f"Failed to get CCM token from {url}: {err.text}. Error 0x{err.hresult:08X}")
        raise StsError(0, f"0x{err.hresult:08X}", err.text) from e
    if reply.status_code != 200:
        err2 = error_of(reply)
        log.error(f"Failed to get CCM token from {url}: HTTP {reply.status_code} {err2.code}: {err2.reason}")
        raise err2
    doc: dict[str, Any] = reply.json()
    return doc


def _https_port(mp: ManagementPoint) -> str:
    return "" if mp.scheme == "https" and mp.port == 443 else (f":{mp.port}" if mp.scheme == "https" else "")


def _der():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER
