"""The connection point's parts, built once per process from the lab: the site configuration it polls,
the upstream client to the MP, the forwarder and one outbound channel per CMG instance. Requests it
forwards for the CMG are recorded in its own lab state, so `/_lab/requests` shows each one with its
rewritten URL."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from cmglab.core.logs import smstrace_logger
from cmglab.runtime.admin import LabState, lab_state
from cmglab.runtime.lab import Lab
from cmglab.services.cmg_connection_point.dialer import Channel, SiteConfig
from cmglab.services.cmg_connection_point.forwarder import Forwarder
from cmglab.services.cmg_connection_point.settings import CPSettings
from cmglab.services.cmg_connection_point.upstream import Upstream
from cmglab.wire import httpclient

SERVICE = "cmg-connection-point"


@dataclass
class Parts:
    lab: Lab
    settings: CPSettings
    name: str  # this point's name in the channel HELLO
    log: logging.Logger
    state: LabState
    mp: httpx.AsyncClient  # polls the site's CMG configuration
    site: SiteConfig
    upstream: Upstream
    forwarder: Forwarder
    channels: list[Channel]

    @classmethod
    def from_lab(cls, lab: Lab, settings: CPSettings | None = None) -> Parts:
        settings = settings or CPSettings()
        s = lab.settings
        name = settings.point_name(lab)
        log = smstrace_logger(lab.log_dir(SERVICE) / "SMS_CLOUD_PROXYCONNECTOR.log", "SMS_CLOUD_PROXYCONNECTOR")
        ident = lab.pki.connection_point
        cert = (ident.cert_path, ident.key_path)
        mp = lab.http_client(client_cert=cert, crl_check=s.crl_check, timeout=s.upstream_timeout)
        site = SiteConfig(mp, settings.config_url(lab), log, max_age=min(s.channel_heartbeat / 2, 5.0))
        state = lab_state(SERVICE, lab)
        ssl_ctx = httpclient.ssl_context(
            ca_bundle=lab.pki.ca_bundle, client_cert=cert, crl_files=[lab.pki.crl_bundle], crl_check=s.crl_check
        )
        mapping = httpclient.parse_resolve(lab.resolve())
        upstream = Upstream(ssl_ctx, mapping, timeout=s.upstream_timeout)
        forwarder = Forwarder(
            upstream,
            log,
            state,
            name=name,
            cmg_name=lab.config.hosts.cmg,
            max_body=s.max_body_bytes,
            timeout=s.upstream_timeout,
        )
        instance = uuid.uuid4().hex[:12]
        channels: list[Channel] = []
        for url in settings.channel_urls(lab):
            parts = urlsplit(url)
            key = ((parts.hostname or "").lower(), parts.port or 443)
            address = (mapping[key], key[1]) if key in mapping else None
            channels.append(
                Channel(
                    url,
                    ssl_ctx=ssl_ctx,
                    address=address,
                    name=name,
                    instance=instance,
                    site=site,
                    forwarder=forwarder,
                    log=log,
                    heartbeat=s.channel_heartbeat,
                    backoff_max=s.channel_backoff_max,
                )
            )
        return cls(
            lab=lab,
            settings=settings,
            name=name,
            log=log,
            state=state,
            mp=mp,
            site=site,
            upstream=upstream,
            forwarder=forwarder,
            channels=channels,
        )

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channels": [c.snapshot() for c in self.channels],
            "site_config": self.site.value is not None,
            "site_config_error": self.site.error,
        }
