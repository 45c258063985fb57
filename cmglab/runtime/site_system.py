"""The listeners of an IIS site system (the management point, the distribution point): one site with an
HTTPS binding and an HTTP binding, the same application behind both."""

from __future__ import annotations

from typing import Any, Literal

from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service


def site_system(
    lab: Lab, name: str, app: Any, *, http_port: int, http: Literal["httptools", "any-method", "h11"] = "httptools"
) -> Service:
    """`name`'s HTTPS listener on its port, the client certificate optional at TLS (from the organisation's
    CAs, checked against the lab's CRLs), and its HTTP listener `<name>-http` on `http_port` (80 in compose)."""
    ident = lab.pki.server(name)
    tls = TLS(
        ident.cert_path,
        ident.key_path,
        client_cert="optional",
        client_ca=lab.pki.client_ca_bundle,
        crl_files=[lab.pki.crl_bundle],
        crl_check=lab.settings.crl_check,
    )
    https = Listener(name, app, lab.port(name), lab.bind(), tls=tls, http=http)
    plain = Listener(f"{name}-http", app, 80 if lab.config.compose else http_port, lab.bind(), tls=None, http=http)
    return Service(name, [https, plain])
