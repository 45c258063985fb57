"""ADALOperationProvider: Entra tokens for the ConfigMgr client through WAM (seed 001).

The device token comes first: a jwt-bearer request signed with the Entra device key (the WPJ
certificate). When it fails the client falls back to a token of the signed-in user: WAM asks for it with
the user's primary refresh token (agent/prt.py; renewed first when 4 hours old), so that it names the
device too. Neither → stop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from cmglab.agent.certstore import KeysetError
from cmglab.agent.device import SYSTEM_SID, Device
from cmglab.agent.dsregcmd.join import join_state, wam_account
from cmglab.agent.entra import EntraClient, EntraError, TokenReply
from cmglab.agent.network import NetworkError, classify
from cmglab.agent.prt import PrtClient, fresh
from cmglab.agent.prt import load as load_prt
from cmglab.agent.prt import valid as prt_valid

# the HRESULTs WAM reports
WAM_BAD_KEYSET = 0xD0090016  # seed 001: "AAD WAM extension error", NTE_BAD_KEYSET as WAM reports it
WAM_NO_ACCOUNT = 0x80070520  # no signed-in user account for the fallback


class AadTokenError(Exception):
    def __init__(self, message: str, hresult: int) -> None:
        super().__init__(message)
        self.hresult = hresult


class NoWpjCertificate(AadTokenError):
    pass


@dataclass
class AadToken:
    kind: str  # device | user
    reply: TokenReply

    @property
    def token(self) -> str:
        return self.reply.access_token


class Logs:
    """Write the same record into several component logs (ccmsetup.log and ADALOperationProvider.log)."""

    def __init__(self, *loggers: logging.Logger) -> None:
        self.loggers = loggers

    def info(self, msg: str) -> None:
        for lg in self.loggers:
            lg.info(msg)

    def warning(self, msg: str) -> None:
        for lg in self.loggers:
            lg.warning(msg)

    def error(self, msg: str) -> None:
        for lg in self.loggers:
            lg.error(msg)


def _hresult(e: Exception) -> int:
    if isinstance(e, EntraError):
        return 0xCAA20000 + (e.code % 0x10000 if e.code else 3)
    if isinstance(e, NetworkError):
        return e.hresult
    return 0x80004005


class AdalOperationProvider:
    def __init__(self, device: Device, http: httpx.Client, resolve: list[str], log: Logs) -> None:
        self.device, self.http, self.log = device, http, log
        self.entra = EntraClient(http, resolve)

    def tenant_id(self) -> str | None:
        state = join_state(self.device)
        return str(state["TenantId"]) if state else None

    def get_token(self, *, client_id: str, resource: str, tenant_id: str | None = None) -> AadToken:
        state = join_state(self.device)
        tenant = tenant_id or (state or {}).get("TenantId")
        cert = self.device.stores.device_cert()
        if state is None or cert is None or not tenant:
            self.log.error(
                "Failed to get AAD token: the device is not Azure AD joined or its WPJ certificate "
                "(MS-Organization-Access) is not in the Personal store. Check 'dsregcmd /status'."
            )
            raise NoWpjCertificate("the WPJ certificate is not found", WAM_BAD_KEYSET)
        account_url = f"{self.entra.login}/common/oauth2/token"
        self.log.info(
            f"Getting AAD (device) token with: ClientId = {client_id}, ResourceUrl = {resource}, "
            f"AccountId = {account_url}"
        )
        try:
            reply = self.entra.device_token(
                str(tenant), cert.cert(), cert.key(), client_id=client_id, resource=resource
            )
            self.log.info(f"Retrieved AAD token for AAD device '{reply.claims.get('deviceid', state['DeviceId'])}'")
            return AadToken("device", reply)
        except KeysetError:
            # the device key cannot sign: WAM's AAD extension fails before any request (seed 001's sample run)
            self.log.warning("WAM token request failed. Status 5, Details 'AAD WAM extension error'")
            self.log.warning("Failed to get AAD token..")
            self.log.warning(f"Unknown error (Error: {WAM_BAD_KEYSET:08X}; Source: Unknown)")
            self.log.warning(f"Failed to get AAD token for '{SYSTEM_SID}' from WAM API. Error 0x{WAM_BAD_KEYSET:08x}")
        except (EntraError, httpx.HTTPError) as e:
            err = e if isinstance(e, EntraError) else classify(e)
            hr = _hresult(err)
            self.log.warning(f"WAM token request failed. Status 5, Details 'AAD WAM extension error: {err}'")
            self.log.warning("Failed to get AAD token..")
            self.log.warning(f"Failed to get AAD token for '{SYSTEM_SID}' from WAM API. Error 0x{hr:08x}")
        account = wam_account(self.device)
        user_sid = (account or {}).get("onprem_sid") or (account or {}).get("object_id") or "<none>"
        self.log.info(f"Falling back to get user '{user_sid}' token for system...")
        record = load_prt(self.device)
        if account is None or not prt_valid(record):
            self.log.error(
                "Failed to get AAD (user) token: no Azure AD account with a primary refresh token is "
                "signed in to WAM on this device."
            )
            raise AadTokenError("neither a device nor a user token is available", WAM_NO_ACCOUNT)
        assert record is not None
        self.log.info(
            f"Getting AAD (user) token with: ClientId = {client_id}, ResourceUrl = {resource}, "
            f"AccountId = {account.get('object_id')}"
        )
        try:
            prt_client = PrtClient(self.entra)
            record = fresh(self.device, prt_client, record)
            reply = prt_client.token(record, client_id=client_id, resource=resource)
        except (EntraError, httpx.HTTPError) as e:
            err = e if isinstance(e, EntraError) else classify(e)
            hr = _hresult(err)
            self.log.error(f"Failed to get AAD (user) token: {err}. Error 0x{hr:08x}")
            raise AadTokenError("neither a device nor a user token is available", hr) from e
        self.log.info(f"Retrieved AAD token for AAD user '{reply.claims.get('oid', '')}'")
        return AadToken("user", reply)
