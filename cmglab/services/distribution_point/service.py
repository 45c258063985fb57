"""`cmglab serve distribution-point`: the DP's IIS site, an HTTPS binding (client certificate optional
at TLS, required per vdir when the DP is set to HTTPS) and an HTTP binding."""

from __future__ import annotations

from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.services.distribution_point.app import create_app
from cmglab.services.distribution_point.parts import Parts


def build(lab: Lab) -> Service:
    app = create_app(Parts.from_lab(lab))
    ident = lab.pki.server("distribution-point")
    https = Listener(
        "distribution-point",
        app,
        lab.port("distribution-point"),
        lab.bind(),
        tls=TLS(
            ident.cert_path,
            ident.key_path,
            client_cert="optional",
            client_ca=lab.pki.client_ca_bundle,
            crl_files=[lab.pki.crl_bundle],
            crl_check=lab.settings.crl_check,
        ),
    )  # httptools: it takes absolute-form request targets (impacket requests the listing's http:// links)
    http_port = 80 if lab.config.compose else lab.config.ports.distribution_point_http
    plain = Listener("distribution-point-http", app, http_port, lab.bind(), tls=None)
    return Service("distribution-point", [https, plain])
