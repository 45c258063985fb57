"""CMG-only settings (env prefix `CMGLAB_CMG_`); the shared ones are in cmglab/core/settings.py."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CMGSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CMGLAB_CMG_", extra="ignore")

    # how often CMGService.log gets its per-URI traffic summaries (the real CMG: 5 minutes)
    summary_interval: float = 300.0
    # how often CMGService.log is copied to the site server's Logs folder (seed 001: every five minutes)
    log_sync_interval: Annotated[float, Field(gt=0)] = 300.0
    # connection points the connector accepts besides the lab's own (CN=<hosts.cmg_connection_point>):
    # comma-separated certificate subject CNs or SHA-1 thumbprints, all issued by the lab issuing CA
    connection_points: str = ""
    # lifetime of the signed content URLs that getcontentxmlsecure hands out
    content_url_lifetime: int = 3600
    # which VM instance this process is (scale-out: several CMG processes, one per instance). As on the real
    # CMG, instance n takes connection points on its own port, the connector port + n (10140-10155), so that
    # a point can reach every instance behind the one CMG name (CMGLAB_CP_CMG_INSTANCES)
    instance: Annotated[int, Field(ge=0, le=15)] = 0

    def extra_points(self) -> set[str]:
        return {p.strip().lower() for p in self.connection_points.split(",") if p.strip()}
