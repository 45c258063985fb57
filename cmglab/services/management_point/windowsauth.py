"""The MP's Windows authentication (`/ccm_system_windowsauth`, `/sms_mp_windowsauth`) against the
lab's domain accounts (`NAME$` computers and users); the IIS behaviour is `runtime.windowsauth`."""

from __future__ import annotations

from pathlib import Path

from cmglab.runtime.lab import Lab
from cmglab.runtime.windowsauth import IIS_401, AuthStep, WindowsAuthenticator
from cmglab.runtime.windowsauth import write_user_file as _write_user_file

__all__ = ["IIS_401", "AuthStep", "WindowsAuth", "write_user_file"]


def write_user_file(lab: Lab) -> Path:
    ad = lab.config.active_directory
    return _write_user_file(lab.dir / "data" / "management-point-ntlm-users", (ad.netbios_name, ad.dns_name),
                            {a.name: a.password for a in ad.accounts})


class WindowsAuth(WindowsAuthenticator):
    def __init__(self, lab: Lab) -> None:
        ad = lab.config.active_directory
        super().__init__(ad.netbios_name, [a.name for a in ad.accounts], write_user_file(lab))
