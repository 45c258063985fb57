"""`cmglab serve management-point`: HTTPS (client certificate optional at TLS) and HTTP listeners."""

from __future__ import annotations

from cmglab.core.logs import smstrace_logger
from cmglab.runtime.fastpath import LeanRoutes
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import Service
from cmglab.runtime.site_system import site_system
from cmglab.runtime.tls import log_refusals_to
from cmglab.services.management_point.app import create_app
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.transport import IISPaths


def build(lab: Lab) -> Service:
    # CcmMessaging's CCM_POST, CCM_STS, policy bodies and client files skip FastAPI's layers (fastpath.py)
    app = IISPaths(LeanRoutes(create_app(Parts.from_lab(lab))))
    # a refused client certificate (revoked, foreign CA) in the product log admins read (seeds 003/004)
    log_refusals_to(smstrace_logger(lab.log_dir("management-point") / "ClientAuth.log", "ClientAuth"))
    # llhttp on both listeners, taking CcmMessaging's CCM_POST (a method it does not know) by anyverb.py
    return site_system(
        lab, "management-point", app, http_port=lab.config.ports.management_point_http, http="any-method"
    )
