"""Windows authentication for `/ccm_system_windowsauth` (IIS: Negotiate and NTLM providers,
anonymous disabled), against the lab's domain accounts (`NAME$` computers and users).

The acceptor is pyspnego's NTLM implementation, reading the accounts from an `NTLM_USER_FILE`
written from the lab config (0600). NTLM needs two round trips on one connection: the server keeps
the half-done context per connection (client address and port) for a short while.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spnego
from spnego.exceptions import SpnegoError

from cmglab.core.labconfig import write_private
from cmglab.runtime.lab import Lab

PENDING_TTL = 60.0
IIS_401 = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n'
    '<html xmlns="http://www.w3.org/1999/xhtml">\r\n<head>\r\n<meta http-equiv="Content-Type" '
    'content="text/html; charset=iso-8859-1"/>\r\n<title>401 - Unauthorized: Access is denied due to invalid '
    "credentials.</title>\r\n</head>\r\n<body>\r\n<div id=\"header\"><h1>Server Error</h1></div>\r\n"
    '<div id="content">\r\n <div class="content-container"><fieldset>\r\n  <h2>401 - Unauthorized: Access is '
    "denied due to invalid credentials.</h2>\r\n  <h3>You do not have permission to view this directory or page "
    "using the credentials that you supplied.</h3>\r\n </fieldset></div>\r\n</div>\r\n</body>\r\n</html>\r\n"
)
CHALLENGE_HEADERS = [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")]


@dataclass
class AuthStep:
    done: bool  # authenticated
    headers: list[tuple[str, str]]  # WWW-Authenticate to send with a 401 (or the final token)
    account: str | None = None  # CORP\name
    error: str | None = None


def write_user_file(lab: Lab) -> Path:
    ad = lab.config.active_directory
    lines = []
    for a in ad.accounts:
        for domain in (ad.netbios_name, ad.dns_name, ""):
            lines.append(f"{domain}:{a.name}:{a.password}")
    path = lab.dir / "data" / "management-point-ntlm-users"
    write_private(path, "\n".join(lines) + "\n")
    return path


class WindowsAuth:
    def __init__(self, lab: Lab) -> None:
        self.netbios = lab.config.active_directory.netbios_name
        self.accounts = {a.name.lower(): a.name for a in lab.config.active_directory.accounts}
        os.environ["NTLM_USER_FILE"] = str(write_user_file(lab))
        self.pending: dict[Any, tuple[Any, str, float]] = {}
        self.lock = threading.Lock()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, _, t) in self.pending.items() if now - t > PENDING_TTL]:
            del self.pending[key]

    def step(self, connection: Any, authorization: str | None) -> AuthStep:
        """One leg of the handshake for `connection` (an opaque key) with the Authorization header."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() not in ("ntlm", "negotiate") or not value.strip():
            return AuthStep(False, CHALLENGE_HEADERS)
        try:
            token = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            return AuthStep(False, CHALLENGE_HEADERS, error="malformed authorization token")
        with self.lock:
            self._expire()
            entry = self.pending.pop(connection, None)
        ctx = entry[0] if entry and entry[1] == scheme.lower() else None
        if ctx is None or token.startswith(b"NTLMSSP\x00\x01\x00\x00\x00") or token[:1] == b"\x60":
            ctx = spnego.server(protocol="ntlm" if scheme.lower() == "ntlm" else "negotiate", service="HTTP")
        try:
            out = ctx.step(token)
        except SpnegoError as e:
            return AuthStep(False, CHALLENGE_HEADERS, error=f"authentication failed: {e}")
        except Exception as e:  # a malformed token from the wire
            return AuthStep(False, CHALLENGE_HEADERS, error=f"bad authentication token: {type(e).__name__}: {e}")
        header_scheme = "NTLM" if scheme.lower() == "ntlm" else "Negotiate"
        if not ctx.complete:
            with self.lock:
                self.pending[connection] = (ctx, scheme.lower(), time.monotonic())
            return AuthStep(False, [("WWW-Authenticate", f"{header_scheme} {base64.b64encode(out or b'').decode()}")])
        principal = str(ctx.client_principal or "")
        user = principal.split("\\")[-1].lower()
        if user not in self.accounts:
            return AuthStep(False, CHALLENGE_HEADERS, error=f"unknown account {principal!r}")
        final = [("WWW-Authenticate", f"{header_scheme} {base64.b64encode(out).decode()}")] if out else []
        return AuthStep(True, final, account=f"{self.netbios}\\{self.accounts[user]}")
