"""`cmglab serve management-point`: HTTPS (client certificate optional at TLS) and HTTP listeners."""

from __future__ import annotations

from cmglab.core.logs import smstrace_logger
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.runtime.tls import log_refusals_to
from cmglab.services.management_point.app import create_app
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.transport import IISPaths


def build(lab: Lab) -> Service:
    app = IISPaths(create_app(Parts.from_lab(lab)))
    # a refused client certificate (revoked, foreign CA) in the product log admins read (seeds 003/004)
    log_refusals_to(smstrace_logger(lab.log_dir("management-point") / "ClientAuth.log", "ClientAuth"))
    ident = lab.pki.server("management-point")
    https = Listener(
        "management-point",
        app,
        lab.port("management-point"),
        lab.bind(),
        tls=TLS(
            ident.cert_path,
            ident.key_path,
            client_cert="optional",
            client_ca=lab.pki.client_ca_bundle,
            crl_files=[lab.pki.crl_bundle],
            crl_check=lab.settings.crl_check,
        ),
        http="h11",  # CCM_POST
    )
    http_port = 80 if lab.config.compose else lab.config.ports.management_point_http
    plain = Listener("management-point-http", app, http_port, lab.bind(), tls=None, http="h11")
    return Service("management-point", [https, plain])
