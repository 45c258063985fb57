"""`cmglab serve entra`: one TLS listener for every Entra name (login hosts and the DRS).

The listener asks for a client certificate (optional) so that a device can delete itself with its
device certificate; the trusted client CAs are the lab's and the MS-Organization-Access CA. Device
certificates carry no CDP, so CRL checking is off here.
"""

from __future__ import annotations

import os
from pathlib import Path

from cmglab.pki.builders import cert_pem
from cmglab.runtime.fastpath import LeanRoutes
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.services.entra.app import create_app
from cmglab.services.entra.parts import Parts


def client_ca_bundle(lab: Lab) -> Path:
    """<lab>/data/entra-client-ca.pem: the lab CA bundle plus the device CA, written atomically."""
    path = lab.dir / "data" / "entra-client-ca.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(lab.pki.ca_bundle.read_bytes() + cert_pem(lab.pki.device_ca.cert()))
    tmp.replace(path)
    return path


def build(lab: Lab) -> Service:
    ident = lab.pki.server("entra")
    tls = TLS(ident.cert_path, ident.key_path, client_cert="optional", client_ca=client_ca_bundle(lab), crl_check=False)
    port = lab.settings.listen_port or lab.port("entra")
    # the token endpoints, the DRS join and the discovery reads skip FastAPI's layers (lean.py); the rest is the
    # FastAPI app
    app = LeanRoutes(create_app(Parts.from_lab(lab)))
    return Service("entra", [Listener("entra", app, port, lab.bind(), tls=tls)])
