"""`cmglab serve distribution-point`: the DP's IIS site, an HTTPS binding (client certificate optional
at TLS, required per vdir when the DP is set to HTTPS) and an HTTP binding."""

from __future__ import annotations

from cmglab.runtime.lab import Lab
from cmglab.runtime.server import Service
from cmglab.runtime.site_system import site_system
from cmglab.services.distribution_point.app import create_app
from cmglab.services.distribution_point.parts import Parts


def build(lab: Lab) -> Service:
    # httptools: it takes absolute-form request targets (impacket requests the listing's http:// links)
    app = create_app(Parts.from_lab(lab))
    return site_system(lab, "distribution-point", app, http_port=lab.config.ports.distribution_point_http)
