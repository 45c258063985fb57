"""The installed client's identity and its way to the site: the one object every component uses (it owns
the device identity; one method per protocol step).

- `ccm_token(mp)`: a cached CCM token, renewed when expired or close to it, with the client's proof
  (Entra token, bulk registration token during ccmsetup only, the MP-issued unique token, or the
  PKI certificate);
- `send(mp, endpoint, body)`: one CcmMessaging exchange (CCM_POST) on the right vdir:
  `ccm_system_tokenauth` with the CCM token through the CMG, `ccm_system` with the PKI certificate
  (CCM_Proxy_MutualAuth or HTTPS) or anonymous HTTP, `ccm_system_windowsauth` with NTLM.

A message, a GET and a CCM_STS request that fail transiently (no connection, a timeout, a dropped
reply, a 5xx such as the CMG's 503 while no connection point is connected) are sent again with a
doubling pause (`cmglab.agent.settings`), each failure logged as CCMHTTP logs it; a 4xx is final.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import httpx

from cmglab.agent.adal import AadTokenError, AdalOperationProvider, Logs
from cmglab.agent.ccm.state import (
    AAD,
    BULK,
    MUTUAL_AUTH,
    PKI,
    ClientState,
    Connections,
    ManagementPoint,
    sms_certificates,
)
from cmglab.agent.ccm.tokens import ClientTokenStore, StsError, TokenCache, local_time, request_ccm_token
from cmglab.agent.certstore import StoredCert
from cmglab.agent.device import SYSTEM_SID, Device, machine_account
from cmglab.agent.network import DeviceNetwork, NetworkError, classify
from cmglab.agent.settings import agent_settings
from cmglab.wire import ccm_messaging as cm
from cmglab.wire import tracing
from cmglab.wire.kinds import Proof

CCM_E_TRANSIENT = 0x87D00231  # what CcmMessaging reports for a post that failed ("Post to ... failed with")
# the WinHTTP error names CCMHTTP logs for a request that got no answer (HRESULT_FROM_WIN32 low word)
_WINHTTP_NAMES = {
    12002: "ERROR_WINHTTP_TIMEOUT",
    12029: "ERROR_WINHTTP_CANNOT_CONNECT",
    12175: "ERROR_WINHTTP_SECURE_FAILURE",
}
T = TypeVar("T")


class MessagingError(Exception):
    def __init__(
        self, message: str, *, status: int = 0, code: str = "", hresult: int = CCM_E_TRANSIENT, transient: bool = False
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.hresult, self.transient = status, code, hresult, transient


class TokenUnavailable(Exception):
    """No CCM token could be obtained: the client cannot use token authentication."""

    def __init__(self, message: str, *, code: str = "", hresult: int = 0x87D00455, transient: bool = False) -> None:
        super().__init__(message)
        self.code, self.hresult, self.transient = code, hresult, transient


def transient_status(status: int) -> bool:
    """A 5xx is the site (or the way to it) failing for now; a 4xx is its answer."""
    return status >= 500


@dataclass
class Reply:
    header: cm.MsgHeader
    body: str


def host_line(prefix: str, mp: ManagementPoint, path: str, token_auth: bool, flags: str, options: str) -> str:
    return (
        f"{prefix}: Host={mp.host}, Path={path}, Port={mp.port}, Protocol={mp.scheme}, "
        f"CcmTokenAuth={int(token_auth)}, Flags={flags}, Options={options}"
    )


class CcmClient:
    def __init__(
        self, device: Device, network: DeviceNetwork, state: ClientState, *, regtoken: str | None = None
    ) -> None:
        self.device, self.network, self.state = device, network, state
        self._regtoken = regtoken  # in memory only, for the life of this ccmsetup
        self.conns = Connections(network)
        self.signing, self.encryption = sms_certificates(device)
        self.cache = TokenCache(device)
        self.force_token_renewal = False  # `ccmexec --renew-token`: the next message renews the CCM token
        self.client_tokens = ClientTokenStore(device)

    def close(self) -> None:
        self.conns.close()
        self._regtoken = None

    # -- identity -------------------------------------------------------------------------------
    @property
    def pki_cert(self) -> StoredCert | None:
        if self.state.pki_thumbprint:
            return self.device.stores.get("My", self.state.pki_thumbprint)
        return None

    def http(self, mp: ManagementPoint) -> httpx.Client:
        use_cert = mp.pki or (not mp.internet and mp.scheme == "https" and self.state.auth_mode == PKI)
        return self.conns.get(self.pki_cert if use_cert else None)

    # -- CCM tokens -----------------------------------------------------------------------------
    def ccm_token(self, mp: ManagementPoint, log: logging.Logger, *, announce_expiry: bool = True) -> str:
        token = None if self.force_token_renewal else self.cache.valid()
        if token is not None:
            return token
        self.force_token_renewal = False
        expires = self.cache.expires()
        if expires is not None and announce_expiry:
            log.info(f"CCM Token for '{SYSTEM_SID}' ({local_time(expires)}) is already expired or close to expire")
            with tracing.operation(self.device.info.name, tracing.Step.RENEWAL):
                return self.renew_token(mp, log)
        return self.renew_token(mp, log)

    def renew_token(
        self,
        mp: ManagementPoint,
        log: logging.Logger,
        *,
        adal_logs: Logs | None = None,
        as_named: bool = False,
        entra_token: str | None = None,
    ) -> str:
        """as_named: log the STS URL under the name the client was given (ccmsetup's CCMHOSTNAME, seed 001
        §3.1), though a token request always goes to the CMG's ServerAuth path. entra_token: the AAD proof
        to use (the one the registration just carried) instead of asking Entra again. adal_logs: where the Entra
        token request logs; the installed client's ADAL provider writes ADALOperationProvider.log (seed 001),
        never the caller's component log (CcmMessaging.log shows the renewal only)."""
        adal = adal_logs or Logs(self.device.ccm_log("ADALOperationProvider.log"))
        reply, proof = retrying(
            lambda: self.obtain(mp, log, adal, as_named, entra_token), log, "Failed to get CCM token"
        )
        expires = self.cache.put(reply, proof)
        log.info(f"Cached encrypted token for '{SYSTEM_SID}'. Will expire at '{local_time(expires)}'")
        if reply.get("ClientToken"):
            self.client_tokens.put(reply["ClientToken"], reply.get("ClientTokenExpiresOn"))
            log.info(f"Renewed the client's unique token; valid until {reply.get('ClientTokenExpiresOn')}")
        return str(reply["Token"])

    def entra_token(self, adal_logs: Logs) -> str:
        """A fresh Entra token for the site's resource (AADRESOURCEURI): the device's, else the signed-in
        user's (ADALOperationProvider.log, seed 001)."""
        aad = self.state.aad or {}
        adal = AdalOperationProvider(self.device, self.conns.get(), self.network.resolve, adal_logs)
        try:
            token = adal.get_token(
                client_id=aad["AADCLIENTAPPID"], resource=aad["AADRESOURCEURI"], tenant_id=aad.get("AADTENANTID")
            )
        except AadTokenError as e:
            raise TokenUnavailable(str(e), code="AADTokenUnavailable", hresult=e.hresult) from e
        return token.token

    def obtain(
        self,
        mp: ManagementPoint,
        log: logging.Logger,
        adal_logs: Logs,
        as_named: bool = False,
        entra_token: str | None = None,
    ) -> tuple[dict[str, Any], Proof]:
        """A CCM token reply for the client's proof."""
        http = self.http(mp)
        shown = mp.url("CCM_STS", family=MUTUAL_AUTH) if as_named and mp.internet else None
        mode, sms_id = self.state.auth_mode, self.state.sms_id
        try:
            if mode == AAD:
                return request_ccm_token(
                    http,
                    mp,
                    proof_type=Proof.AAD,
                    bearer=entra_token or self.entra_token(adal_logs),
                    signing=self.signing,
                    client_id=sms_id,
                    log=log,
                    shown_url=shown,
                ), Proof.AAD
            if mode == PKI:
                return request_ccm_token(
                    http,
                    mp,
                    proof_type=Proof.CERTIFICATE,
                    bearer=None,
                    signing=self.signing,
                    client_id=sms_id,
                    log=log,
                    shown_url=shown,
                ), Proof.CERTIFICATE
            stored = self.client_tokens.get()
            if stored is not None:
                renew = self.client_tokens.due_for_renewal()
                if renew:
                    log.info("The client's unique token is a month old: asking for a new one")
                return request_ccm_token(
                    http,
                    mp,
                    proof_type=Proof.CLIENT_TOKEN,
                    bearer=stored["Token"],
                    signing=self.signing,
                    client_id=sms_id,
                    log=log,
                    renew_client_token=renew,
                    shown_url=shown,
                ), Proof.CLIENT_TOKEN
            if mode == BULK and self._regtoken:
                return request_ccm_token(
                    http,
                    mp,
                    proof_type=Proof.BULK_REGISTRATION,
                    bearer=self._regtoken,
                    signing=self.signing,
                    client_id=sms_id,
                    log=log,
                    shown_url=shown,
                ), Proof.BULK_REGISTRATION
        except StsError as e:
            raise TokenUnavailable(
                f"CCM_STS refused the {mode} proof: {e.code}: {e.reason}",
                code=e.code,
                transient=e.status == 0 or transient_status(e.status),
            ) from e
        raise TokenUnavailable(
            f"the client has no proof for a CCM token (auth mode {mode or 'none'}, no unique client token)",
            code="NoProof",
        )

    # -- CcmMessaging ---------------------------------------------------------------------------
    def vdir(self, mp: ManagementPoint, *, windows_auth: bool = False) -> str:
        if mp.token_auth:
            return "ccm_system_tokenauth"
        if windows_auth:
            return "ccm_system_windowsauth"
        return "ccm_system"

    def send(
        self,
        mp: ManagementPoint,
        endpoint: str,
        body: str,
        *,
        log: logging.Logger,
        signed: bool = False,
        windows_auth: bool = False,
        prefix: str = "ccmhttp",
        flags: str = "0x4200",
        options: str = "0x1e0",
        remote_sync: bool = False,
        retry: bool = True,
        announced: bool = False,
        entra_token: str | None = None,
    ) -> Reply:
        """One message, sent again (same message ID) while it fails transiently, unless `retry` is off.
        `entra_token`: the message carries it instead of the CCM token (registration with Entra auth)."""
        info = self.device.info
        header = cm.MsgHeader(
            target_endpoint=endpoint,
            target_host=mp.host,
            source_host=info.name,
            source_id=self.state.sms_id if signed else None,
            reply_to=f"direct:{info.name}:SccmMessaging",
        )
        if remote_sync:
            log.info(
                f"Sending remote sync message '{header.id}' to host '{mp.name}' endpoint '{endpoint}'. "
                f"Flags 0x280, sender account {SYSTEM_SID}"
            )
        raw = cm.encode_request(header, body, signer=self.signing.key() if signed else None)
        path = mp.path(f"{self.vdir(mp, windows_auth=windows_auth)}/request")
        token = entra_token or (self.ccm_token(mp, log) if mp.token_auth else None)  # renewed (and retried) on its own

        def post() -> Reply:
            return self._post(
                mp,
                path,
                header,
                raw,
                token,
                log=log,
                windows_auth=windows_auth,
                prefix=prefix,
                flags=flags,
                options=options,
                announced=announced,
                entra=entra_token is not None,
            )

        if not retry:
            return post()
        return retrying(post, log, f"Failed to send message '{header.id}' to endpoint '{endpoint}'")

    def _post(
        self,
        mp: ManagementPoint,
        path: str,
        header: cm.MsgHeader,
        raw: bytes,
        token: str | None,
        *,
        log: logging.Logger,
        windows_auth: bool,
        prefix: str,
        flags: str,
        options: str,
        announced: bool = False,
        entra: bool = False,
    ) -> Reply:
        url = mp.base + path
        if not announced:  # else the caller logged the connection (ccmsetup: Host=, then Created connection)
            log.info(host_line(prefix, mp, path, token is not None, flags, options))
            if mp.scheme == "https":
                log.info(f"Target URL scheme is HTTPS: {url}")
        headers = {"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT}
        if token is not None:
            log.info("Appending AAD token to the header." if entra else "Appending CCM Token to the header.")
            headers["Authorization"] = f"Bearer {token}"
        http = self.http(mp)
        try:
            if windows_auth:
                reply = self._negotiate(http, url, raw, headers)
            else:
                reply = http.request("CCM_POST", url, content=raw, headers=headers)
        except httpx.HTTPError as e:
            err = classify(e)
            ccmhttp_failure(log, mp, url, int(options, 16), error=err)
            log.error(f"Post to {url} failed with 0x{CCM_E_TRANSIENT:08x}.")
            raise MessagingError(f"{err.text} (0x{err.hresult:08X})", hresult=err.hresult, transient=True) from e
        if reply.status_code != 200:
            code, reason = _error_body(reply)
            ccmhttp_failure(log, mp, url, int(options, 16), status=reply.status_code)
            log.error(f"Post to {url} failed with 0x{CCM_E_TRANSIENT:08x}.")
            log.error(f"Message '{header.id}' to {url} failed: HTTP {reply.status_code} {code}: {reason}")
            raise MessagingError(
                f"HTTP {reply.status_code} {code}: {reason}",
                status=reply.status_code,
                code=code,
                transient=transient_status(reply.status_code),
            )
        if not reply.content:
            log.error(f"Message '{header.id}' got an empty reply from {url} (not registered, or a bad signature)")
            raise MessagingError("empty reply", status=200, code="EmptyReply")
        try:
            reply_header, reply_body = cm.decode_reply(reply.content, reply.headers.get("content-type"))
        except cm.CcmMessageError as e:
            log.error(f"Message '{header.id}': the reply cannot be parsed: {e}")
            raise MessagingError(f"bad reply: {e}") from e
        log.info(f"Message '{header.id}' got reply message '{reply_header.id}' to endpoint 'dummy'")
        return Reply(reply_header, reply_body)

    def _negotiate(self, http: httpx.Client, url: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
        """NTLM over one connection, as the machine account (LSA secret of a domain-joined device)."""
        import spnego

        account = machine_account(self.device)
        if account is None:
            raise NetworkError(0x8009030E, "this device has no domain machine account (not domain joined)")
        ctx = spnego.client(
            account["username"], account["password"], hostname=httpx.URL(url).host, service="HTTP", protocol="ntlm"
        )

        def auth(token: bytes | None) -> dict[str, str]:
            return {**headers, "Authorization": f"NTLM {base64.b64encode(token or b'').decode()}"}

        reply = http.request("CCM_POST", url, content=raw, headers=auth(ctx.step()))
        for _ in range(2):
            if reply.status_code != 401:
                return reply
            challenge = next(
                (
                    v.split(" ", 1)[1]
                    for k, v in reply.headers.multi_items()
                    if k.lower() == "www-authenticate" and v.startswith(("NTLM ", "Negotiate "))
                ),
                None,
            )
            if challenge is None:
                return reply
            reply = http.request("CCM_POST", url, content=raw, headers=auth(ctx.step(base64.b64decode(challenge))))
        return reply

    # -- plain GETs through the same door (content, policy bodies) ------------------------------
    def get(
        self,
        mp: ManagementPoint,
        url: str,
        log: logging.Logger,
        *,
        token: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The reply to a GET (any status below 500); sent again while it fails transiently."""
        hdrs = dict(headers or {})
        with_token = token if token is not None else mp.token_auth
        if with_token:
            hdrs["Authorization"] = f"Bearer {self.ccm_token(mp, log)}"  # renewed (and retried) on its own

        def attempt() -> httpx.Response:
            if with_token:
                log.info("Appending CCM Token to the header.")
            try:
                reply = self.http(mp).get(url, headers=hdrs)
            except httpx.HTTPError as e:
                err = classify(e)
                ccmhttp_failure(log, mp, url, 0xE0, error=err)
                raise MessagingError(f"{err.text} (0x{err.hresult:08X})", hresult=err.hresult, transient=True) from e
            if transient_status(reply.status_code):
                ccmhttp_failure(log, mp, url, 0xE0, status=reply.status_code)
                raise MessagingError(f"GET {url}: HTTP {reply.status_code}", status=reply.status_code, transient=True)
            return reply

        return retrying(attempt, log, f"Failed to get '{url}'")


def retrying(attempt: Callable[[], T], log: logging.Logger, what: str) -> T:
    """`attempt()` until it succeeds, fails for good (not transient) or the attempts are spent."""
    settings = agent_settings()
    n = 1
    while True:
        try:
            return attempt()
        except (MessagingError, TokenUnavailable) as e:
            if not e.transient or n >= settings.ccmhttp_attempts:
                raise
            delay = settings.retry_delay(n)
            log.warning(f"{what} (attempt {n} of {settings.ccmhttp_attempts}): {e}. Will retry in {delay:g} second(s).")
            time.sleep(delay)
            n += 1


def ccmhttp_failure(
    log: logging.Logger,
    mp: ManagementPoint,
    url: str,
    options: int,
    *,
    status: int = 0,
    error: NetworkError | None = None,
) -> None:
    """The lines CCMHTTP writes for a request that failed (a real client's CcmMessaging.log,
    LocationServices.log): no answer → the WinHTTP error; an answer → its HTTP status."""
    if error is not None:
        code = error.hresult & 0xFFFF if error.hresult >> 16 == 0x8007 else 0
        text = _WINHTTP_NAMES.get(code, f"0x{error.hresult:08X}")
        log.error(f"[CCMHTTP] ERROR: URL={url}, Port={mp.port}, Options={options}, Code={code}, Text={text}")
    else:
        log.error(
            f"[CCMHTTP] ERROR: URL={url}, Port={mp.port}, Options={options}, Code=0, Text=CCM_E_BAD_HTTP_STATUS_CODE"
        )
        log.error(f"[CCMHTTP] ERROR INFO: StatusCode={status} StatusText={_phrase(status)}")
    log.info(f"Successfully queued event on HTTP/HTTPS failure for server '{mp.host}'.")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _error_body(reply: httpx.Response) -> tuple[str, str]:
    try:
        body = reply.json()
        return str(body.get("Error", "")), str(body.get("Reason", ""))
    except ValueError:
        return "", reply.text[:200]
