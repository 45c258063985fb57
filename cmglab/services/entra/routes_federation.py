"""The lab's federation service (AD FS stand-in) at `https://sts.<federated domain>/adfs/services/trust/...`:
MEX metadata and the WS-Trust 1.3 usernamemixed endpoint (cmglab/services/entra/federation.py). A SOAP
fault answers with HTTP 500, as AD FS does."""

from __future__ import annotations

import threading

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cmglab.core.ad import ADError, LabDirectory, ad_path
from cmglab.core.labconfig import load_config
from cmglab.runtime.admin import record
from cmglab.runtime.lab import Lab
from cmglab.runtime.windowsauth import WindowsAuthenticator, unauthorized, write_user_file
from cmglab.services.entra import store as st
from cmglab.services.entra.federation import FederationService, SoapFault
from cmglab.wire.kinds import AuthKind

SOAP = "application/soap+xml; charset=utf-8"


def windows_authenticator(lab: Lab) -> WindowsAuthenticator:
    """The lab AD's accounts as they are now (a domain join adds computers while the lab runs)."""
    ad = load_config(lab.dir / "lab.json").active_directory
    accounts = {a.name: a.password for a in ad.accounts}
    user_file = write_user_file(
        lab.dir / "data" / "federation" / "ntlm-users", (ad.netbios_name, ad.dns_name), accounts
    )
    return WindowsAuthenticator(ad.netbios_name, list(accounts), user_file)


class CurrentAuthenticator:
    """The authenticator for the lab AD as lab.json has it now, rebuilt (its account file rewritten) only when
    lab.json changed: an anonymous request must not make the service load the lab and write a file."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._built: tuple[int, WindowsAuthenticator] | None = None
        self._lock = threading.Lock()

    def get(self) -> WindowsAuthenticator:
        stamp = Lab.config_path(self.lab.dir).stat().st_mtime_ns
        with self._lock:
            if self._built is None or self._built[0] != stamp:
                self._built = (stamp, windows_authenticator(self.lab))
            return self._built[1]


def router(sts: FederationService, lab: Lab) -> APIRouter:
    r = APIRouter()
    current = CurrentAuthenticator(lab)

    def federated_domain(request: Request) -> tuple[str, str]:
        """(the federated domain the Host header names as sts.<domain>, the base URL the client used)."""
        host = (request.headers.get("host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        domain = name.removeprefix("sts.")
        with sts.store.session() as s:
            row = s.get(st.Domain, domain)
            if not name.startswith("sts.") or row is None or not row.federated:
                raise HTTPException(404, f"no federation service at {name}")
        return domain, f"https://{host}"

    @r.get("/adfs/services/trust/mex")
    async def mex(request: Request) -> Response:
        _, base = federated_domain(request)
        return Response(sts.mex(base), media_type=SOAP)

    @r.post("/adfs/services/trust/13/usernamemixed")
    async def usernamemixed(request: Request) -> Response:
        domain, _ = federated_domain(request)
        body = await request.body()
        try:
            rstr = await run_in_threadpool(sts.issue, domain, body)
        except SoapFault as e:
            record(request).update(auth_kind=AuthKind.WSTRUST, result=e.subcode)
            return Response(e.envelope(), status_code=500, media_type=SOAP)
        record(request).update(auth_kind=AuthKind.WSTRUST)
        return Response(rstr, media_type=SOAP)

    @r.post("/adfs/services/trust/13/windowstransport")
    async def windowstransport(request: Request) -> Response:
        """WS-Trust with Windows integrated authentication (NTLM/Negotiate on the connection): a domain
        computer gets its on-premises claims for the federated hybrid join."""
        domain, _ = federated_domain(request)
        auth = await run_in_threadpool(current.get)
        step = await auth.login(request)
        if not step.done:
            record(request).update(auth_kind=AuthKind.WSTRUST_WINDOWS, result=step.error)
            return unauthorized(step.headers)
        sam = (step.account or "").split("\\")[-1]
        body = await request.body()
        try:
            if not sam.endswith("$"):
                raise SoapFault(
                    "RequestFailed",
                    "MSIS7068: the lab's windowstransport endpoint issues tokens to domain computers only.",
                )
            try:
                computer = LabDirectory(ad_path(lab.dir), lab.config).computer(sam)
            except (ADError, OSError, ValueError) as e:
                raise SoapFault("RequestFailed", f"the directory cannot be read: {e}") from e
            if computer is None:
                raise SoapFault("FailedAuthentication", f"ID3242: no computer object {sam} in the directory.")
            rstr = await run_in_threadpool(sts.issue_for_computer, domain, body, computer)
        except SoapFault as e:
            record(request).update(auth_kind=AuthKind.WSTRUST_WINDOWS, auth_subject=step.account, result=e.subcode)
            return Response(e.envelope(), status_code=500, media_type=SOAP)
        record(request).update(auth_kind=AuthKind.WSTRUST_WINDOWS, auth_subject=step.account)
        reply = Response(rstr, media_type=SOAP)
        for name, value in step.headers:
            reply.headers.append(name, value)
        return reply

    return r
