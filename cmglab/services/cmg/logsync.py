"""The copy of CMGService.log on the site server (seed 001 §3.2: "Configuration Manager synchronizes the
CMGService.log to the site server logs folder every five minutes as CMG-<CMGname>-ProxyService_IN_<%>-
CMGService.log").

On a real site the site server pulls each VM instance's log from the cloud service; in the lab each CMG
instance process writes its copy into `<lab>/logs/site-server/` (the site server's Logs folder) every
`CMGLAB_CMG_LOG_SYNC_INTERVAL` seconds (300) and once more when it stops.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path


def synced_name(cmg_host: str, instance: int) -> str:
    """`CMG-<CMG name>-ProxyService_IN_<instance>-CMGService.log`; the CMG name is the cloud service's
    (the first label of its host name: GraniteFalls.cloudapp.net → GraniteFalls)."""
    return f"CMG-{cmg_host.split('.')[0]}-ProxyService_IN_{instance}-CMGService.log"


class LogSync:
    def __init__(self, source: Path, site_logs: Path, cmg_host: str, instance: int) -> None:
        self.source = source
        self.target = site_logs / synced_name(cmg_host, instance)

    def copy(self) -> None:
        """Replace the site server's copy with the log as it is now (never a half-written copy)."""
        if not self.source.exists():
            return
        self.target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.target.with_name(self.target.name + ".tmp")
        shutil.copyfile(self.source, tmp)
        tmp.replace(self.target)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.copy)

    async def final(self) -> None:
        await asyncio.to_thread(self.copy)
