"""IIS Windows authentication (Negotiate and NTLM providers, anonymous disabled), connection-based.

IIS authenticates a keep-alive connection once: the NTLM (or Negotiate) handshake takes two round
trips on one connection, and once it completes, later requests on that connection are served as the
authenticated account without an Authorization header (IIS `authPersistNonNTLM` and
`authPersistSingleRequest=false`, the defaults). Tools rely on it: ntlmrelayx authenticates a
connection with a relayed handshake, then sends its own requests on it. A new handshake on an
authenticated connection starts over; a failed one leaves the connection anonymous.

The acceptor is pyspnego's NTLM implementation, reading the accounts from the file named by
`NTLM_USER_FILE` (one `DOMAIN:user:password` a line). The handshake state and its result live in
the connection's `ConnectionState` (runtime.connection), dropped when the connection closes.
Any service with an IIS `*_windowsauth` virtual directory (management point, distribution point)
builds one `WindowsAuthenticator` and calls `login` for each request on those paths.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spnego
from spnego.exceptions import SpnegoError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cmglab.core.labconfig import LabConfig, LabConfigError, load_config, write_private
from cmglab.runtime.connection import ConnectionState, connection_state

IIS_401 = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n'
    '<html xmlns="http://www.w3.org/1999/xhtml">\r\n<head>\r\n<meta http-equiv="Content-Type" '
    'content="text/html; charset=iso-8859-1"/>\r\n<title>401 - Unauthorized: Access is denied due to invalid '
    'credentials.</title>\r\n</head>\r\n<body>\r\n<div id="header"><h1>Server Error</h1></div>\r\n'
    '<div id="content">\r\n <div class="content-container"><fieldset>\r\n  <h2>401 - Unauthorized: Access is '
    "denied due to invalid credentials.</h2>\r\n  <h3>You do not have permission to view this directory or page "
    "using the credentials that you supplied.</h3>\r\n </fieldset></div>\r\n</div>\r\n</body>\r\n</html>\r\n"
)
CHALLENGE_HEADERS = [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")]
_PENDING = "windowsauth.pending"  # (scheme, half-done server context)
_ACCOUNT = "windowsauth.account"  # DOMAIN\name the connection authenticated as


@dataclass
class AuthStep:
    done: bool  # authenticated
    headers: list[tuple[str, str]]  # WWW-Authenticate to send with a 401 (or the final token)
    account: str | None = None  # DOMAIN\name
    error: str | None = None
    persisted: bool = False  # authenticated earlier on this connection, no handshake in this request


def write_user_file(path: Path, domains: tuple[str, ...], accounts: Mapping[str, str]) -> Path:
    """The acceptor's account file (0600), each account under every domain spelling and none."""
    lines = [f"{domain}:{name}:{password}" for name, password in accounts.items() for domain in (*domains, "")]
    write_private(path, "\n".join(lines) + "\n")
    return path


def unauthorized(headers: list[tuple[str, str]]) -> Response:
    resp = Response(IIS_401, status_code=401, media_type="text/html")
    for name, value in headers:
        resp.headers.append(name, value)
    return resp


class WindowsAuthenticator:
    def __init__(self, netbios: str, account_names: list[str], user_file: Path) -> None:
        self.netbios = netbios
        self.accounts = {name.lower(): name for name in account_names}
        os.environ["NTLM_USER_FILE"] = str(user_file)  # pyspnego's NTLM acceptor reads it per context

    def step(self, state: ConnectionState, authorization: str | None) -> AuthStep:
        """One leg of the handshake on the connection `state` with the request's Authorization header."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        scheme = scheme.lower()
        if scheme not in ("ntlm", "negotiate") or not value.strip():
            account = state.values.get(_ACCOUNT)
            if account is not None:
                return AuthStep(True, [], account=account, persisted=True)
            return AuthStep(False, CHALLENGE_HEADERS)
        state.values.pop(_ACCOUNT, None)  # a new handshake: the connection is anonymous until it completes
        pending = state.values.pop(_PENDING, None)
        try:
            token = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            return AuthStep(False, CHALLENGE_HEADERS, error="malformed authorization token")
        ctx: Any = pending[1] if pending and pending[0] == scheme else None
        if ctx is None or token.startswith(b"NTLMSSP\x00\x01\x00\x00\x00") or token[:1] == b"\x60":
            ctx = spnego.server(protocol="ntlm" if scheme == "ntlm" else "negotiate", service="HTTP")
        try:
            out = ctx.step(token)
        except SpnegoError as e:
            return AuthStep(False, CHALLENGE_HEADERS, error=f"authentication failed: {e}")
        except Exception as e:  # a malformed token from the wire
            return AuthStep(False, CHALLENGE_HEADERS, error=f"bad authentication token: {type(e).__name__}: {e}")
        header_scheme = "NTLM" if scheme == "ntlm" else "Negotiate"
        if not ctx.complete:
            if state.open:
                state.values[_PENDING] = (scheme, ctx)
            return AuthStep(False, [("WWW-Authenticate", f"{header_scheme} {base64.b64encode(out or b'').decode()}")])
        principal = str(ctx.client_principal or "")
        user = principal.split("\\")[-1].lower()
        if user not in self.accounts:
            return AuthStep(False, CHALLENGE_HEADERS, error=f"unknown account {principal!r}")
        account = f"{self.netbios}\\{self.accounts[user]}"
        if state.open:
            state.values[_ACCOUNT] = account
        final = [("WWW-Authenticate", f"{header_scheme} {base64.b64encode(out).decode()}")] if out else []
        return AuthStep(True, final, account=account)

    async def login(self, request: Request) -> AuthStep:
        """This request's step; a request from a server without connection state gets a throwaway one
        (authentication then lasts one request)."""
        state = connection_state(request.scope) or ConnectionState()
        authorization = request.headers.get("authorization")
        if not authorization and _ACCOUNT in state.values:
            return self.step(state, None)  # no crypto: stay on the event loop
        return await run_in_threadpool(self.step, state, authorization)


class LabAccountsAuthenticator(WindowsAuthenticator):
    """Windows authentication against lab.json's AD accounts as they are NOW: `cmglab device create --domain`
    adds a computer account to lab.json while the lab runs, and a running service must accept it without a
    restart. lab.json's mtime is checked (one stat) only on a handshake leg that carries a token, never on an
    anonymous or already-authenticated request; the accounts (and the acceptor's file) are rebuilt only when
    it changed. A half-written lab.json keeps the accounts read last."""

    def __init__(
        self, lab_json: Path, user_file: Path, accounts: Callable[[LabConfig], dict[str, str]] | None = None
    ) -> None:
        self._lab_json, self._user_file = lab_json, user_file
        self._accounts_of = accounts or domain_accounts
        self._lock = threading.Lock()
        self._stamp = self._mtime()  # before the read: a change during it is seen next time
        config = load_config(lab_json)
        super().__init__(config.active_directory.netbios_name, [], user_file)
        self._load(config)

    def _mtime(self) -> int | None:
        try:
            return self._lab_json.stat().st_mtime_ns
        except OSError:
            return None

    def _load(self, config: LabConfig) -> None:
        ad = config.active_directory
        accounts = self._accounts_of(config)
        write_user_file(self._user_file, (ad.netbios_name, ad.dns_name), accounts)
        self.netbios = ad.netbios_name
        self.accounts = {name.lower(): name for name in accounts}

    def refresh(self) -> None:
        """Re-read the accounts if lab.json changed since they were read."""
        stamp = self._mtime()
        if stamp is None or stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                config = load_config(self._lab_json)
            except (OSError, ValueError, LabConfigError):  # half-written (save_config is not atomic): next time
                return
            self._load(config)
            self._stamp = stamp

    def step(self, state: ConnectionState, authorization: str | None) -> AuthStep:
        if authorization and authorization.strip().partition(" ")[2].strip():
            self.refresh()
        return super().step(state, authorization)


def domain_accounts(config: LabConfig) -> dict[str, str]:
    """The lab AD's accounts (computers NAME$ and users) with their passwords."""
    return {a.name: a.password for a in config.active_directory.accounts}
