"""The DP's parts, built once per process by `Parts.from_lab` and handed to `create_app`: the content
library, Windows authentication (domain accounts and the network access account), the IIS log, and
the DP's properties (re-read from lab.json when it changes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cmglab.core.labconfig import DistributionPoint, LabConfig, load_config
from cmglab.runtime.contentlib import ContentLibrary
from cmglab.runtime.lab import Lab
from cmglab.runtime.windowsauth import LabAccountsAuthenticator, WindowsAuthenticator, domain_accounts
from cmglab.services.distribution_point.iislog import IISLog
from cmglab.services.distribution_point.samples import ensure_samples


@dataclass
class Parts:
    lab: Lab
    library: ContentLibrary
    auth: WindowsAuthenticator
    iislog: IISLog
    _site: tuple[int, DistributionPoint] | None = field(default=None, repr=False)

    def site(self) -> DistributionPoint:
        """The DP's properties (anonymous access, HTTPS) as lab.json has them now: `cmglab content dp`
        changes them on a running DP, as the console does, without a restart."""
        path = Lab.config_path(self.lab.dir)
        try:
            stamp = path.stat().st_mtime_ns
            if self._site is None or self._site[0] != stamp:
                self._site = (stamp, load_config(path).distribution_point)
        except (OSError, ValueError):  # half-written: keep what was read last
            if self._site is None:
                return self.lab.config.distribution_point
        return self._site[1]

    @classmethod
    def from_lab(cls, lab: Lab) -> Parts:
        # the client package (<lab>/content/<site>00001) is the MP's build: the DP serves that folder once
        # it is there (the MP starts first), and the lab's own packages, made here on the first start
        library = ContentLibrary(lab.content_dir, lab.config)
        ensure_samples(library)
        return cls(lab, library, windows_auth(lab), IISLog(lab.log_dir("distribution-point") / "u_ex.log"))


def windows_auth(lab: Lab) -> WindowsAuthenticator:
    """Windows authentication against the domain's accounts as lab.json has them now (a domain join adds
    computers while the lab runs) and the network access account (what clients that are not domain members
    use for content)."""

    def accounts(config: LabConfig) -> dict[str, str]:
        naa = config.site.network_access_account
        return domain_accounts(config) | {naa.username.split("\\")[-1]: naa.password}

    return LabAccountsAuthenticator(
        Lab.config_path(lab.dir), lab.dir / "data" / "distribution-point-ntlm-users", accounts
    )
