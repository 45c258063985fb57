"""The CMG refuses at its door, before the MP sees anything (the MP's recorded requests prove it):
MutualAuth without a certificate, with a foreign CA's, with a revoked one; ServerAuth without a token,
with an expired one, one signed by another key, an Entra token of a tenant not onboarded."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from cmglab.pki import builders as b
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.tools.processes import LabProcesses
from tests.support.cmg import (
    FAST_ENV,
    channel_up,
    cmg_health,
    cmg_points,
    cmg_requests,
    mp_requests,
    new_bulk_token,
    proxy_url,
    wait_for,
)
from tests.support.lab import lab_client, new_lab
from tests.support.mp import Device, ccm_post
from tests.support.threaded import ThreadedService

REAL_ENTRA = (Path(__file__).parent.parent / "cmglab" / "services" / "entra" / "service.py").exists()


def entra_token(
    lab: Lab, tenant_id: str, *, audience: str = "https://ConfigMgrService", key: rsa.RSAPrivateKey | None = None
) -> str:
    """An Entra access token (v1 shape) signed with the lab Entra signing key that Entra's JWKS publishes."""
    ident = lab.pki.entra_signing
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "tid": tenant_id,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "oid": str(uuid.uuid4()),
        "deviceid": str(uuid.uuid4()),
        "upn": "eve@fabrikam.onmicrosoft.com",
        "ver": "1.0",
    }
    kid = b.x5t(ident.cert())
    return jwt.encode(claims, key or ident.key(), algorithm="RS256", headers={"kid": kid, "x5t": kid})


def jwks_app(lab: Lab) -> FastAPI:
    """Until cmglab/services/entra serves it: Entra's JWKS endpoint on Entra's name, port and certificate."""
    app = FastAPI()
    cert = lab.pki.entra_signing.cert()
    numbers = lab.pki.entra_signing.key().public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    @app.get("/common/discovery/keys")
    def keys() -> dict[str, Any]:
        kid = b.x5t(cert)
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": kid,
                    "x5t": kid,
                    "n": b64(numbers.n),
                    "e": b64(numbers.e),
                    "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
                }
            ]
        }

    return app


# not lab_fixture: a lab of its own, its services with short timeouts (FAST_ENV) and, without the real
# Entra, a stand-in JWKS service
@pytest.fixture(scope="module")
def auth_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("cmgauth") / "lab")


@pytest.fixture(scope="module")
def services(auth_lab: Lab) -> Iterator[LabProcesses]:
    p = LabProcesses(auth_lab, env=dict(FAST_ENV, CMGLAB_UPSTREAM_TIMEOUT="20"))
    jwks: ThreadedService | None = None
    try:  # stopped on every way out, a failed start included
        if REAL_ENTRA:
            p.ensure("entra")
        else:
            ident = auth_lab.pki.server("entra")
            jwks = ThreadedService(
                Service(
                    "entra-jwks",
                    [
                        Listener(
                            "jwks", jwks_app(auth_lab), auth_lab.port("entra"), tls=TLS(ident.cert_path, ident.key_path)
                        )
                    ],
                )
            )
            jwks.__enter__()
        p.ensure("management-point", "cmg", "cmg-connection-point")
        wait_for(lambda: channel_up(auth_lab) and cmg_points(auth_lab), what="channel up")
        wait_for(lambda: cmg_health(auth_lab)["site_config"], what="site configuration at the CMG")
        yield p
    finally:
        p.stop_all()
        if jwks is not None:
            jwks.__exit__(None, None, None)


def site_paths(lab: Lab) -> list[str]:
    """Every request the MP recorded except the connection point's configuration polls."""
    return [r["path"] for r in mp_requests(lab) if r["path"].lower() != "/ccm_cloud/config"]


class MPUntouched:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def __enter__(self) -> MPUntouched:
        self.before = site_paths(self.lab)
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            assert site_paths(self.lab) == self.before, "the MP saw a request the CMG should have refused"


def sts_body(device: Device, token: str, proof: str) -> bytes:
    return json.dumps(device.proof(proof, token)).encode()


# -- MutualAuth ------------------------------------------------------------------------------------
def test_mutual_auth_without_certificate(auth_lab: Lab, services: LabProcesses) -> None:
    with MPUntouched(auth_lab), lab_client(auth_lab) as c:
        r = ccm_post(c, proxy_url(auth_lab, "ccm_system/request", "MutualAuth"), Device().registration_message())
        assert r.status_code == 403 and r.json()["Error"] == "CertificateRequired"
    assert cmg_requests(auth_lab, "MutualAuth")[0]["refused"] == "CertificateRequired"


def _foreign_client(tmp_path: Path) -> tuple[Path, Path]:
    ca_key = b.new_key()
    ca = b.self_signed_ca(ca_key, b.name("Rogue Root CA"))
    key = b.new_key()
    cert = b.leaf(
        key.public_key(), b.name("rogue.lab.test"), ca, ca_key, ekus=[b.CLIENT_AUTH], san=["rogue.lab.test"], days=30
    )
    crt, pem = tmp_path / "rogue.crt", tmp_path / "rogue.key"
    crt.write_bytes(b.cert_pem(cert) + b.cert_pem(ca))
    pem.write_bytes(b.key_pem(key))
    return crt, pem


def test_mutual_auth_with_foreign_ca(auth_lab: Lab, services: LabProcesses, tmp_path: Path) -> None:
    with (
        MPUntouched(auth_lab),
        lab_client(auth_lab, cert=_foreign_client(tmp_path)) as c,
        pytest.raises(httpx.TransportError),
    ):
        ccm_post(c, proxy_url(auth_lab, "ccm_system/request", "MutualAuth"), Device().registration_message())


def test_mutual_auth_with_revoked_certificate(auth_lab: Lab, services: LabProcesses) -> None:
    ident = auth_lab.pki.issue_client("revoked-dev.corp.lab.test")
    cert = (ident.cert_path, ident.key_path)
    with lab_client(auth_lab, cert=cert) as c:  # valid first: it passes
        r = ccm_post(c, proxy_url(auth_lab, "ccm_system/request", "MutualAuth"), Device().registration_message())
        assert r.status_code == 200
    auth_lab.pki.revoke("revoked-dev.corp.lab.test")
    with MPUntouched(auth_lab), lab_client(auth_lab, cert=cert) as c, pytest.raises(httpx.TransportError):
        ccm_post(c, proxy_url(auth_lab, "ccm_system/request", "MutualAuth"), Device().registration_message())


# -- ServerAuth ------------------------------------------------------------------------------------
def _refused(lab: Lab, path: str, headers: dict[str, str], status: int, error: str, body: bytes = b"{}") -> None:
    with MPUntouched(lab), lab_client(lab) as c:
        r = c.request("CCM_POST" if "request" in path else "POST", proxy_url(lab, path), content=body, headers=headers)
        assert r.status_code == status, r.text
        assert r.json()["Error"] == error
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"


def test_server_auth_without_token(auth_lab: Lab, services: LabProcesses) -> None:
    _refused(auth_lab, "CCM_STS", {}, 401, "TokenRequired")
    _refused(auth_lab, "ccm_system_tokenauth/request", {"Authorization": "Basic dXNlcjpwdw=="}, 401, "TokenRequired")


def test_server_auth_with_expired_token(auth_lab: Lab, services: LabProcesses) -> None:
    old, _ = auth_lab.site_signer().ccm_token(token_type="Device", now=datetime.now(UTC) - timedelta(hours=9))
    _refused(auth_lab, "ccm_system_tokenauth/request", {"Authorization": f"Bearer {old}"}, 401, "TokenExpired")
    bulk, *_ = auth_lab.site_signer().bulk_token(minutes=60, now=datetime.now(UTC) - timedelta(hours=3))
    _refused(
        auth_lab,
        "CCM_STS",
        {"Authorization": f"Bearer {bulk}"},
        401,
        "TokenExpired",
        sts_body(Device(), bulk, "BulkRegistration"),
    )


def test_server_auth_with_token_signed_by_another_key(auth_lab: Lab, services: LabProcesses) -> None:
    signer = auth_lab.site_signer()
    good, _ = signer.ccm_token(token_type="Device")
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(
        claims,
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"typ": "JWT", "x5t": b.x5t(signer.cert)},
    )  # claims to be the site's
    _refused(auth_lab, "ccm_system_tokenauth/request", {"Authorization": f"Bearer {forged}"}, 401, "InvalidToken")
    # an Entra-looking token signed by a key Entra does not publish
    fake = entra_token(auth_lab, auth_lab.config.primary_tenant.tenant_id, key=b.new_key())
    _refused(auth_lab, "CCM_STS", {"Authorization": f"Bearer {fake}"}, 401, "InvalidToken")


def test_server_auth_entra_token_of_tenant_not_onboarded(auth_lab: Lab, services: LabProcesses) -> None:
    other = next(t for t in auth_lab.config.tenants if not t.onboarded)
    token = entra_token(auth_lab, other.tenant_id)
    _refused(
        auth_lab,
        "CCM_STS",
        {"Authorization": f"Bearer {token}"},
        403,
        "TenantNotOnboarded",
        sts_body(Device(), token, "AAD"),
    )
    # the same token shape for the onboarded tenant passes the CMG and reaches the MP's CCM_STS
    good = entra_token(auth_lab, auth_lab.config.primary_tenant.tenant_id)
    with lab_client(auth_lab) as c:
        r = c.post(
            proxy_url(auth_lab, "CCM_STS"),
            content=sts_body(Device(), good, "AAD"),
            headers={"Authorization": f"Bearer {good}"},
        )
    assert r.status_code != 403 or r.json()["Error"] != "TenantNotOnboarded"
    assert mp_requests(auth_lab, "CCM_STS")[0]["status"] == r.status_code
    assert cmg_requests(auth_lab, "CCM_STS")[0]["auth_kind"] == "EntraToken"


def test_server_auth_ccm_token_is_not_a_proof_and_a_proof_is_not_a_ccm_token(
    auth_lab: Lab, services: LabProcesses
) -> None:
    bulk = new_bulk_token(auth_lab)
    _refused(auth_lab, "ccm_system_tokenauth/request", {"Authorization": f"Bearer {bulk}"}, 401, "InvalidToken")
    ccm, _ = auth_lab.site_signer().ccm_token(token_type="Device")
    _refused(auth_lab, "CCM_STS", {"Authorization": f"Bearer {ccm}"}, 401, "InvalidToken")


def test_a_known_token_is_still_refused_where_its_type_does_not_belong(auth_lab: Lab, services: LabProcesses) -> None:
    """The CMG remembers site tokens it verified (by their text): one accepted where it belongs is still
    refused where it does not, the next time too."""
    bulk = new_bulk_token(auth_lab)
    ccm, _ = auth_lab.site_signer().ccm_token(token_type="Device")
    with lab_client(auth_lab) as c:
        for token, path in ((bulk, "CCM_STS"), (ccm, "ccm_system_tokenauth/request")):
            c.request(
                "CCM_POST", proxy_url(auth_lab, path), content=b"{}", headers={"Authorization": f"Bearer {token}"}
            )
            assert cmg_requests(auth_lab, path.split("/")[0])[0].get("refused") is None  # passed the CMG: known now
    for _ in range(2):
        _refused(auth_lab, "ccm_system_tokenauth/request", {"Authorization": f"Bearer {bulk}"}, 401, "InvalidToken")
        _refused(auth_lab, "CCM_STS", {"Authorization": f"Bearer {ccm}"}, 401, "InvalidToken")


def test_refusals_are_logged(auth_lab: Lab, services: LabProcesses) -> None:
    text = (auth_lab.dir / "logs" / "cmg" / "CMGService.log").read_text()
    assert "401 TokenRequired: CCM_Proxy_ServerAuth needs Authorization: Bearer <token>" in text
    assert "403 TenantNotOnboarded" in text and "403 CertificateRequired" in text
