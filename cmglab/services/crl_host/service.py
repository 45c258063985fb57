"""The lab's CRL distribution point and AIA host (`cmglab serve pki`): plain HTTP, like a real CDP.

Serves the files `LabPKI` writes, read fresh on every request so a revoke is visible at once.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from cmglab.pki.labpki import CA_NAMES
from cmglab.runtime.admin import install_lab_admin
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import Listener, Service


def create_app(lab: Lab) -> FastAPI:
    app = FastAPI(title="cmglab PKI (CRL/AIA)", docs_url=None, redoc_url=None)
    pki = lab.pki

    @app.get("/crl/{filename}")
    def crl(filename: str) -> Response:
        ca, _, ext = filename.partition(".")
        if ca not in CA_NAMES or ext not in ("crl", "crl.pem"):
            raise HTTPException(404, "no such CRL")
        path = pki.crl_path(ca, pem=ext == "crl.pem")
        return Response(path.read_bytes(), media_type="application/pkix-crl")

    @app.get("/aia/{filename}")
    def aia(filename: str) -> Response:
        ca, _, ext = filename.partition(".")
        if ca not in CA_NAMES or ext != "crt":
            raise HTTPException(404, "no such CA certificate")
        return Response(pki.aia_path(ca).read_bytes(), media_type="application/pkix-cert")

    install_lab_admin(app, service="pki", lab=lab)
    return app


def build(lab: Lab) -> Service:
    return Service("pki", [Listener("pki", create_app(lab), lab.port("pki"), lab.bind())])
