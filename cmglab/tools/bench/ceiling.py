"""The transport ceiling: a trivial endpoint served by the same runtime as the lab services (uvicorn,
uvloop, httptools, the TLS scope protocol, client certificate required, CRL check on).

    python -m cmglab.tools.bench.ceiling --lab DIR --port N
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service, run_service


def build(lab: Lab, port: int) -> Service:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> JSONResponse:
        return JSONResponse({"ok": True})

    ident = lab.pki.server("cmg")
    tls = TLS(
        ident.cert_path,
        ident.key_path,
        client_cert="required",
        client_ca=lab.pki.client_ca_bundle,
        crl_files=[lab.pki.crl_bundle],
        crl_check=True,
    )
    return Service("ceiling", [Listener("ceiling", app, port, lab.bind(), tls)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lab", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_service(build(Lab.load(args.lab), args.port))


if __name__ == "__main__":
    main()
