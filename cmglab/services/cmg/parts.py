"""The CMG's parts (what its routes use), built once per process from the lab: the channel hub the
connection points dial into, authentication, the proxy over the channel, the content store, the
per-URI traffic summaries and CMGService.log."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

from cmglab.core.logs import smstrace_logger
from cmglab.runtime.lab import Lab
from cmglab.services.cmg.auth import Authenticator
from cmglab.services.cmg.channel import Hub
from cmglab.services.cmg.content import ContentStore
from cmglab.services.cmg.proxy import Proxy
from cmglab.services.cmg.settings import CMGSettings
from cmglab.services.cmg.stats import TrafficStats
from cmglab.wire.entra_tokens import EntraKeys


@dataclass
class Parts:
    lab: Lab
    settings: CMGSettings
    hub: Hub
    auth: Authenticator
    proxy: Proxy
    content: ContentStore
    stats: TrafficStats
    log: logging.Logger

    @classmethod
    def from_lab(cls, lab: Lab, settings: CMGSettings | None = None) -> Parts:
        settings = settings or CMGSettings()
        log = smstrace_logger(lab.log_dir("cmg") / "CMGService.log", "CMGService")
        hub = Hub(log, lab.settings.channel_heartbeat, settings.instance)
        entra = EntraKeys(lab.http_client(timeout=10), lab.entra_jwks_url())
        secret = hmac.new(lab.admin_token().encode(), b"cmg-content-urls", hashlib.sha256).digest()
        content = ContentStore(
            lab.content_dir,
            lab.url("cmg"),
            secret,
            enabled=lab.config.site.content_enabled_cmg,
            default_package=lab.config.site.client_package_id,
            lifetime=settings.content_url_lifetime,
        )
        proxy = Proxy(
            hub,
            log,
            name=lab.config.hosts.cmg,
            max_body=lab.settings.max_body_bytes,
            timeout=lab.settings.upstream_timeout,
        )
        return cls(
            lab=lab,
            settings=settings,
            hub=hub,
            auth=Authenticator(lab, entra),
            proxy=proxy,
            content=content,
            stats=TrafficStats(log),
            log=log,
        )
