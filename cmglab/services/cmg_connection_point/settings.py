"""Connection-point-only settings (env prefix `CMGLAB_CP_`); the shared ones are in
cmglab/core/settings.py (heartbeat, backoff, timeouts, limits, CRL checking)."""

from __future__ import annotations

import socket
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cmglab.runtime.lab import Lab
from cmglab.wire.cmg_channel import PATH


class CPSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CMGLAB_CP_", extra="ignore")

    # the CMG instances to dial, comma-separated `wss://host:port` (default: every instance of the lab's CMG)
    cmg_urls: str = ""
    # how many VM instances the lab's CMG has: like the real point, dial each on its own port behind the one
    # CMG name, the connector port + n (10140, 10141, ... up to 10155)
    cmg_instances: Annotated[int, Field(ge=1, le=16)] = 1
    # where the site publishes its CMG configuration (default: the lab's MP; GET <site_url>/CCM_Cloud/config)
    site_url: str = ""
    # this point's name in the channel HELLO (default: the lab's connection point host name)
    name: str = ""
    # the admin listener's port (default: the lab's; a second point in one lab needs its own)
    admin_port: int | None = None
    # the admin listener's address (default: the lab's bind address; in compose, the point's internal address)
    admin_bind: str = ""

    def channel_urls(self, lab: Lab) -> list[str]:
        urls = [u.strip().rstrip("/") for u in self.cmg_urls.split(",") if u.strip()]
        if not urls:
            urls = [
                f"wss://{lab.config.hosts.cmg}:{lab.config.ports.cmg_connector + n}" for n in range(self.cmg_instances)
            ]
        return [u if u.endswith(PATH) else u + PATH for u in urls]

    def config_url(self, lab: Lab) -> str:
        return (self.site_url.rstrip("/") or lab.url("management-point")) + "/CCM_Cloud/config"

    def point_name(self, lab: Lab) -> str:
        return self.name or lab.config.hosts.cmg_connection_point

    def port(self, lab: Lab) -> int:
        return self.admin_port or lab.port("cmg-connection-point")

    def bind(self, lab: Lab) -> str:
        """Where the admin listener listens. The point sits on both networks in compose, and its /_lab/ endpoints
        are for the internal one: bind the address its internal name (an alias on that network only) resolves to,
        so nothing on the internet network reaches the listener at all."""
        if self.admin_bind:
            return self.admin_bind
        if lab.config.compose and not lab.settings.bind:
            return socket.gethostbyname(lab.config.hosts.cmg_connection_point)
        return lab.bind()
