"""`cmglab serve cmg`: the client listener, the connector listener and the traffic summaries."""

from __future__ import annotations

import functools
import hashlib
import hmac

from cmglab.core.logs import smstrace_logger
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.runtime.tls import log_refusals_to
from cmglab.services.cmg.app import CMG, create_app
from cmglab.services.cmg.auth import Authenticator
from cmglab.services.cmg.channel import Hub
from cmglab.services.cmg.connector import Registry, create_connector_app
from cmglab.services.cmg.content import ContentStore
from cmglab.services.cmg.proxy import Proxy
from cmglab.services.cmg.settings import CMGSettings
from cmglab.services.cmg.stats import TrafficStats
from cmglab.wire.entra_tokens import EntraKeys


def build(lab: Lab) -> Service:
    settings = CMGSettings()
    log = smstrace_logger(lab.log_dir("cmg") / "CMGService.log", "CMGService")
    log_refusals_to(log)  # a revoked client certificate refused at TLS shows in CMGService.log
    hub = Hub(log, lab.settings.channel_heartbeat, settings.instance)
    connector_port = lab.config.ports.cmg_connector + settings.instance
    entra = EntraKeys(lab.http_client(timeout=10), lab.entra_jwks_url())
    secret = hmac.new(lab.admin_token().encode(), b"cmg-content-urls", hashlib.sha256).digest()
    content = ContentStore(lab.content_dir, lab.url("cmg"), secret, enabled=lab.config.site.content_enabled_cmg,
                           default_package=lab.config.site.client_package_id,
                           lifetime=settings.content_url_lifetime)
    stats = TrafficStats(log)
    cmg = CMG(lab=lab, hub=hub, auth=Authenticator(lab, entra),
              proxy=Proxy(hub, log, name=lab.config.hosts.cmg, max_body=lab.settings.max_body_bytes,
                          timeout=lab.settings.upstream_timeout),
              content=content, stats=stats, log=log)
    ident = lab.pki.server("cmg")

    def tls(mode: str) -> TLS:
        return TLS(ident.cert_path, ident.key_path, client_cert=mode,  # type: ignore[arg-type]
                   client_ca=lab.pki.ca_bundle, crl_files=[lab.pki.crl_bundle], crl_check=lab.settings.crl_check)

    async def final_summary() -> None:
        stats.flush()

    log.info(f"CMG {lab.config.hosts.cmg} instance {settings.instance} starting: clients on port {lab.port('cmg')}, "
             f"connection points on port {connector_port}")
    return Service(
        "cmg",
        [
            # h11: CcmMessaging's CCM_POST verb must pass (httptools refuses unknown methods)
            Listener("cmg", create_app(cmg), lab.port("cmg"), lab.bind(), tls("optional"), http="h11"),
            Listener("cmg-connector", create_connector_app(lab, hub, Registry(lab, settings.extra_points()), log),
                     connector_port, lab.bind(), tls("required")),
        ],
        background=[functools.partial(stats.run, settings.summary_interval)],
        on_stop=[final_summary],
    )
