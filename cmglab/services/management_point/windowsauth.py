"""The MP's Windows authentication (`/ccm_system_windowsauth`, `/sms_mp_windowsauth`) against the
lab's domain accounts (`NAME$` computers and users); the IIS behaviour is `runtime.windowsauth`."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, Response

from cmglab.runtime.admin import record
from cmglab.runtime.lab import Lab
from cmglab.runtime.windowsauth import IIS_401, AuthStep, WindowsAuthenticator, unauthorized
from cmglab.runtime.windowsauth import write_user_file as _write_user_file
from cmglab.services.management_point.site import MP

__all__ = ["IIS_401", "AuthStep", "WindowsAuth", "windows_logon", "write_user_file"]


def write_user_file(lab: Lab) -> Path:
    ad = lab.config.active_directory
    return _write_user_file(lab.dir / "data" / "management-point-ntlm-users", (ad.netbios_name, ad.dns_name),
                            {a.name: a.password for a in ad.accounts})


class WindowsAuth(WindowsAuthenticator):
    def __init__(self, lab: Lab) -> None:
        ad = lab.config.active_directory
        super().__init__(ad.netbios_name, [a.name for a in ad.accounts], write_user_file(lab))


async def windows_logon(mp: MP, windows: WindowsAuth, request: Request) -> tuple[str | None, Response | None]:
    """IIS Windows authentication of a `*_windowsauth` request: (account, None) or (None, the 401)."""
    step = await windows.login(request)
    if not step.done:
        if step.error:
            mp.logs.clientauth.warning(f"Windows authentication failed on {request.url.path}: {step.error}")
        return None, unauthorized(step.headers)
    rec = record(request)
    rec["auth_kind"], rec["auth_subject"] = "windows", step.account
    if not step.persisted:
        mp.logs.clientauth.info(f"Windows authentication succeeded for {step.account}")
    return step.account, None
