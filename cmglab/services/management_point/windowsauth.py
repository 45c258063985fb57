"""The MP's Windows authentication (`/ccm_system_windowsauth`, `/sms_mp_windowsauth`) against the
lab's domain accounts (`NAME$` computers and users) as lab.json has them now (a domain join adds computers
while the lab runs); the IIS behaviour is `runtime.windowsauth`."""

from __future__ import annotations

from cmglab.runtime.lab import Lab
from cmglab.runtime.windowsauth import IIS_401, AuthStep, LabAccountsAuthenticator

__all__ = ["IIS_401", "AuthStep", "WindowsAuth"]


class WindowsAuth(LabAccountsAuthenticator):
    def __init__(self, lab: Lab) -> None:
        super().__init__(Lab.config_path(lab.dir), lab.dir / "data" / "management-point-ntlm-users")
