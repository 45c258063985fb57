"""`cmglab serve pki`: the lab's CRL distribution point and AIA host, plain HTTP like a real CDP."""

from __future__ import annotations

from cmglab.runtime.lab import Lab
from cmglab.runtime.server import Listener, Service
from cmglab.services.crl_host.app import create_app
from cmglab.services.crl_host.parts import Parts


def build(lab: Lab) -> Service:
    return Service("pki", [Listener("pki", create_app(Parts.from_lab(lab)), lab.port("pki"), lab.bind())])
