"""`cmglab serve cmg`: the client listener, the connector listener and the traffic summaries."""

from __future__ import annotations

import functools

from cmglab.runtime.fastpath import LeanRoutes
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.runtime.tls import log_refusals_to
from cmglab.services.cmg.app import create_app
from cmglab.services.cmg.connector import (
    CONNECTOR_HEAD_DEADLINE,
    RESERVED_CONNECTIONS,
    ConnectorAdmission,
    Registry,
    create_connector_app,
)
from cmglab.services.cmg.logsync import LogSync
from cmglab.services.cmg.memory import fix_mmap_threshold
from cmglab.services.cmg.parts import Parts


def build(lab: Lab) -> Service:
    fix_mmap_threshold()  # idle keep-alive connections: their TLS read buffers resident only where written
    parts = Parts.from_lab(lab)
    settings, hub, stats, log = parts.settings, parts.hub, parts.stats, parts.log
    log_refusals_to(log)  # a revoked client certificate refused at TLS shows in CMGService.log
    connector_port = lab.config.ports.cmg_connector + settings.instance
    ident = lab.pki.server("cmg")

    def tls(mode: str) -> TLS:
        return TLS(
            ident.cert_path,
            ident.key_path,
            client_cert=mode,  # type: ignore[arg-type]
            client_ca=lab.pki.client_ca_bundle,
            crl_files=[lab.pki.crl_bundle],
            crl_check=lab.settings.crl_check,
        )

    sync = LogSync(
        lab.log_dir("cmg") / "CMGService.log", lab.log_dir("site-server"), lab.config.hosts.cmg, settings.instance
    )

    async def final_summary() -> None:
        stats.flush()
        await sync.final()

    registry = Registry(lab, settings.extra_points())
    log.info(
        f"CMG {lab.config.hosts.cmg} instance {settings.instance} starting: clients on port {lab.port('cmg')}, "
        f"connection points on port {connector_port}"
    )
    return Service(
        "cmg",
        [
            # any-method: llhttp that takes CcmMessaging's CCM_POST verb (runtime/anyverb.py); the connection
            # points' WebSocket channel is on the connector listener below
            # the gateway's URLs on the lean path (runtime/fastpath.py), /_lab/ on the FastAPI app
            Listener(
                "cmg", LeanRoutes(create_app(parts)), lab.port("cmg"), lab.bind(), tls("optional"), http="any-method"
            ),
            Listener(
                "cmg-connector",
                create_connector_app(lab, hub, registry, log),
                connector_port,
                lab.bind(),
                tls("required"),
                reserved=RESERVED_CONNECTIONS,
                head_deadline=CONNECTOR_HEAD_DEADLINE,
                admit=ConnectorAdmission.of(lab, registry, log),
            ),
        ],
        background=[
            functools.partial(stats.run, settings.summary_interval),
            functools.partial(sync.run, settings.log_sync_interval),
        ],
        on_stop=[final_summary],
    )
