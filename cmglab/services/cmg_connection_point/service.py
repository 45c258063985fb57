"""`cmglab serve cmg-connection-point`: the admin listener and one outbound channel per CMG instance."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import urlsplit

from cmglab.core.logs import smstrace_logger
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import Listener, Service
from cmglab.services.cmg_connection_point.app import create_app
from cmglab.services.cmg_connection_point.dialer import Channel, SiteConfig
from cmglab.services.cmg_connection_point.forwarder import Forwarder
from cmglab.services.cmg_connection_point.settings import CPSettings
from cmglab.services.cmg_connection_point.upstream import Upstream
from cmglab.wire import httpclient


def build(lab: Lab) -> Service:
    settings = CPSettings()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # config polls every heartbeat: not news
    s = lab.settings
    name = settings.point_name(lab)
    log = smstrace_logger(lab.log_dir("cmg-connection-point") / "SMS_CLOUD_PROXYCONNECTOR.log",
                          "SMS_CLOUD_PROXYCONNECTOR")
    ident = lab.pki.connection_point
    cert = (ident.cert_path, ident.key_path)
    mp = lab.http_client(client_cert=cert, crl_check=s.crl_check, timeout=s.upstream_timeout)
    site = SiteConfig(mp, settings.config_url(lab), log, max_age=min(s.channel_heartbeat / 2, 5.0))
    channels: list[Channel] = []

    def health() -> dict[str, Any]:
        return {"name": name, "channels": [c.snapshot() for c in channels],
                "site_config": site.value is not None, "site_config_error": site.error}

    app, state = create_app(lab, health)
    ssl_ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert,
                                     crl_files=[lab.pki.crl_bundle], crl_check=s.crl_check)
    mapping = httpclient.parse_resolve(lab.resolve())
    upstream = Upstream(ssl_ctx, mapping, timeout=s.upstream_timeout)
    forwarder = Forwarder(upstream, log, state, name=name, cmg_name=lab.config.hosts.cmg, max_body=s.max_body_bytes,
                          timeout=s.upstream_timeout)
    instance = uuid.uuid4().hex[:12]
    for url in settings.channel_urls(lab):
        parts = urlsplit(url)
        key = ((parts.hostname or "").lower(), parts.port or 443)
        address = (mapping[key], key[1]) if key in mapping else None
        channels.append(Channel(url, ssl_ctx=ssl_ctx, address=address, name=name, instance=instance, site=site,
                                forwarder=forwarder, log=log, heartbeat=s.channel_heartbeat,
                                backoff_max=s.channel_backoff_max))
    log.info(f"Connection point {name} starting: CMG instances {', '.join(c.url for c in channels)}; "
             f"site configuration from {site.url}")

    async def run_channels() -> None:
        await asyncio.gather(*(c.run() for c in channels))

    async def close_client() -> None:
        await mp.aclose()
        await upstream.aclose()

    return Service("cmg-connection-point",
                   [Listener("cmg-connection-point", app, settings.port(lab), lab.bind())],
                   background=[run_channels], on_stop=[close_client])
