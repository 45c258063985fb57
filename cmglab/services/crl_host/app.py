"""The lab's CRL distribution point and AIA host: `/crl/<ca>.crl[.pem]` and `/aia/<ca>.crt`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from cmglab.pki.labpki import CA_NAMES
from cmglab.runtime.admin import install_lab_admin
from cmglab.services.crl_host.errors import NotPublished, install_error_handler
from cmglab.services.crl_host.parts import Parts


def create_app(parts: Parts) -> FastAPI:
    app = FastAPI(title="cmglab PKI (CRL/AIA)", docs_url=None, redoc_url=None)
    pki = parts.pki

    @app.get("/crl/{filename}")
    def crl(filename: str) -> Response:
        ca, _, ext = filename.partition(".")
        if ca not in CA_NAMES or ext not in ("crl", "crl.pem"):
            raise NotPublished("no such CRL")
        path = pki.crl_path(ca, pem=ext == "crl.pem")
        return Response(path.read_bytes(), media_type="application/pkix-crl")

    @app.get("/aia/{filename}")
    def aia(filename: str) -> Response:
        ca, _, ext = filename.partition(".")
        if ca not in CA_NAMES or ext != "crt":
            raise NotPublished("no such CA certificate")
        return Response(pki.aia_path(ca).read_bytes(), media_type="application/pkix-cert")

    install_lab_admin(app, service="pki", lab=parts.lab)
    install_error_handler(app)
    return app
