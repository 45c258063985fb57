"""The authorization matrix (`cmglab/tools/reliability/matrix.py`), executed: every route family × every
credential over real sockets against the session lab, compared with the table; and the README's
"Authorization matrix" section is that same table.

Credentials the client agent would obtain are minted with the lab's keys (Entra signing key, site
signing key, issuing CA) — what the services validate — except the ones only the site can issue for a
registered client: the fixture registers a device with a bulk token and takes the client unique token
the MP returns and a CCM token from CCM_STS, as the agent does."""

from __future__ import annotations

import contextlib
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets.sync.client

from cmglab.core.labconfig import DRS_RESOURCE
from cmglab.runtime.lab import Lab
from cmglab.tools.reliability import matrix
from cmglab.tools.reliability.material import CertFiles, Material
from cmglab.wire import ccm_messaging as cm
from cmglab.wire import cmg_channel
from tests.support.cmg import proxy_url
from tests.support.entra_device import EntraClient, join_body, new_key
from tests.support.lab import lab_client, lab_fixture
from tests.support.mp import Device, ccm_post, http_url, https_url, lab_rows, reply_body

ROOT = Path(__file__).parent.parent
CERT_CREDENTIALS = {"pki", "pki_revoked", "foreign_ca", "sms_self_signed", "connection_point"}
SITE_AUDIENCE = "https://ConfigMgrService"


@dataclass
class Credentials:
    lab: Lab
    material: Material
    device: Device  # registered with a bulk token: its unique token and CCM token are the site's own
    client_unique: str
    ccm: str
    bulk: str
    bulk_blocked: str
    drs_device_id: str

    def bearer(self, cred: str, audience: str = SITE_AUDIENCE) -> str | None:
        m = self.material
        entra_other = (
            m.entra_token(tenant_id=m.other_tenant_id, audience=audience)
            if audience == SITE_AUDIENCE
            else m.entra_token(audience=SITE_AUDIENCE)
        )  # Entra's own routes: another audience
        return {
            "entra_user": m.entra_token(audience=audience),
            "entra_device": m.entra_token(user=False, audience=audience),
            "entra_other": entra_other,
            "ccm": self.ccm,
            "ccm_expired": m.ccm_token(expired=True),
            "client_unique": self.client_unique,
            "bulk": self.bulk,
            "bulk_blocked": self.bulk_blocked,
            "admin": self.lab.admin_token(),
        }.get(cred)

    def cert(self, cred: str) -> CertFiles | None:
        m = self.material
        return {
            "pki": m.pki_client,
            "pki_revoked": m.revoked_client,
            "foreign_ca": m.foreign_client,
            "sms_self_signed": m.self_signed_sms_client,
            "connection_point": m.connection_point,
        }.get(cred)

    def headers(self, cred: str, audience: str = SITE_AUDIENCE) -> dict[str, str]:
        token = self.bearer(cred, audience)
        return {"Authorization": f"Bearer {token}"} if token else {}


services = lab_fixture("entra", "management-point", "cmg", "cmg-connection-point")


@pytest.fixture(scope="module")
def creds(lab: Lab, services: Lab, tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    material = Material(lab, tmp_path_factory.mktemp("matrix"))
    assert material.revoked_client  # revoked before any row runs: every row sees the same CRL
    device = Device("MATRIX01")
    bulk = material.bulk_token()
    with lab_client(lab) as c:
        r = c.post(
            f"{https_url(lab)}/CCM_STS",
            json=device.proof("BulkRegistration", bulk),
            headers={"Authorization": f"Bearer {bulk}"},
        )
        assert r.status_code == 200, r.text
        bulk_ccm = r.json()["Token"]
        reply = cm.parse_xml(
            reply_body(
                ccm_post(
                    c,
                    f"{https_url(lab)}/ccm_system_tokenauth/request",
                    device.registration_message(),
                    {"Authorization": f"Bearer {bulk_ccm}"},
                )
            )
        )
        device.sms_id, unique = reply.get("SMSID"), reply.get("PreAuthToken")
        assert device.sms_id and unique, reply.attrib
        r = c.post(
            f"{https_url(lab)}/CCM_STS",
            json=device.proof("ClientToken", unique),
            headers={"Authorization": f"Bearer {unique}"},
        )
        assert r.status_code == 200, r.text
        entra = EntraClient(lab, c)
        joined = entra.join(join_body(new_key(), new_key(), name="MATRIX-PC"))
        assert joined.status_code == 201, joined.text
    return Credentials(
        lab,
        material,
        device,
        unique,
        r.json()["Token"],
        material.bulk_token(),
        material.blocked_bulk_token,
        _device_id(joined.json()),
    )


def _device_id(join_reply: dict[str, object]) -> str:
    from base64 import b64decode

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    raw = join_reply["Certificate"]
    assert isinstance(raw, dict)
    cert = x509.load_der_x509_certificate(b64decode(raw["RawBody"]))
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


# -- one request per route family ---------------------------------------------------------------------
PROOF_OF = {
    "entra_user": "AAD",
    "entra_device": "AAD",
    "entra_other": "AAD",
    "admin": "AAD",
    "ccm": "ClientToken",
    "ccm_expired": "ClientToken",
    "client_unique": "ClientToken",
    "bulk": "BulkRegistration",
    "bulk_blocked": "BulkRegistration",
}
ROUTE_PROOF = {
    "mp_sts_aad": "AAD",
    "mp_sts_bulk": "BulkRegistration",
    "mp_sts_client": "ClientToken",
    "mp_sts_certificate": "Certificate",
}


def attempt(creds: Credentials, route: str, cred: str) -> int:
    """The status the route answered with that credential; 0 when the TLS handshake refused it."""
    lab, device = creds.lab, creds.device
    audience = DRS_RESOURCE if route in ("drs_join", "drs_delete") else SITE_AUDIENCE
    headers = creds.headers(cred, audience)
    cert = creds.cert(cred)
    if route == "cmg_connector":
        return _websocket(lab, cert, headers)
    try:
        with lab_client(lab, cert=cert) as c:
            if route == "entra_token":
                return c.post(
                    f"{lab.url('entra')}/common/oauth2/token", data={"grant_type": "srv_challenge"}, headers=headers
                ).status_code
            if route == "drs_join":
                drs = lab.url("entra", host="enterpriseregistration.windows.net")
                return c.post(
                    f"{drs}/EnrollmentServer/device/",
                    params={"api-version": "2.0"},
                    json=join_body(new_key(), new_key(), name="MATRIX-X"),
                    headers=headers,
                ).status_code
            if route == "drs_delete":
                drs = lab.url("entra", host="enterpriseregistration.windows.net")
                return c.delete(f"{drs}/EnrollmentServer/device/{creds.drs_device_id}", headers=headers).status_code
            if route in ("cmg_server_sts", *ROUTE_PROOF):
                proof = ROUTE_PROOF.get(route) or PROOF_OF.get(cred, "Certificate")
                url = proxy_url(lab, "CCM_STS") if route == "cmg_server_sts" else f"{https_url(lab)}/CCM_STS"
                token = creds.bearer(cred) or ""
                return c.post(url, json=device.proof(proof, token), headers=headers).status_code
            if route == "mp_sms_pol":
                policy = next(p["policy_id"] for p in lab_rows(lab, "policies") if p["secret"])
                return c.get(
                    f"{https_url(lab)}/SMS_MP_TokenAuth/.sms_pol?{policy}.{'2_00'}",
                    headers={**headers, **device.client_token_headers()},
                ).status_code
            if route == "mp_cloud_config":
                return c.get(f"{https_url(lab)}/CCM_Cloud/config", headers=headers).status_code
            if route == "lab_reset":
                return c.post(f"{lab.url('cmg')}/_lab/reset", headers=headers).status_code
            if route == "cmg_lab_requests":
                return c.get(f"{lab.url('cmg')}/_lab/requests", headers=headers).status_code
            if route in ("cmg_server_message", "mp_tokenauth_message"):  # the registered device's policy request
                url = (
                    proxy_url(lab, "ccm_system_tokenauth/request")
                    if route == "cmg_server_message"
                    else f"{https_url(lab)}/ccm_system_tokenauth/request"
                )
                message = device.signed_message("MP_PolicyManager", device.assignments_body())
                return ccm_post(c, url, message, headers).status_code
            url = {
                "cmg_mutual": proxy_url(lab, "ccm_system/request", "MutualAuth"),
                "cmg_server_other": proxy_url(lab, "ccm_system_tokenauth/request"),
                "mp_ccm_system_http": f"{http_url(lab)}/ccm_system/request",
                "mp_ccm_system_https": f"{https_url(lab)}/ccm_system/request",
                "mp_tokenauth": f"{https_url(lab)}/ccm_system_tokenauth/request",
            }[route]
            return ccm_post(c, url, Device(f"M{uuid.uuid4().hex[:6]}").registration_message(), headers).status_code
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        if cert is None:
            raise
        return 0  # TLS 1.3 refuses a client certificate after the handshake: the connection closes


def _websocket(lab: Lab, cert: CertFiles | None, headers: dict[str, str]) -> int:
    ctx = ssl.create_default_context(cafile=str(lab.pki.ca_bundle))
    if cert:
        ctx.load_cert_chain(*map(str, cert))
    port = lab.config.ports.cmg_connector
    # a connection that fails before any answer is tried once more (a refused credential fails both times: the
    # connector hangs up at TLS); an HTTP answer (101, 401, 403) is the decision and is never retried
    for attempt_left in (1, 0):
        try:
            ws = websockets.sync.client.connect(
                f"wss://{lab.config.bind_address}:{port}{cmg_channel.PATH}",
                ssl=ctx,
                server_hostname=lab.config.hosts.cmg,
                additional_headers=headers,
                open_timeout=10,
            )
            break
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code
        except (OSError, websockets.exceptions.WebSocketException):
            if not attempt_left:
                return 0  # the connector requires a client certificate at TLS: without one, or a bad one, it hangs up
    # the CMG expects a HELLO first; how it ends an idle channel is not the question
    with contextlib.suppress(websockets.exceptions.WebSocketException, OSError), ws:
        pass
    return 101


def outcome(status: int) -> str:
    if status == 0 or status in (401, 403):
        return "deny"
    if status < 400 or status == 101:
        return "allow"
    return f"error {status}"


# -- the tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", [r for r, _ in matrix.ROUTES])
def test_route_family(creds: Credentials, route: str) -> None:
    got = {cred: outcome(attempt(creds, route, cred)) for cred, _ in matrix.CREDENTIALS}
    want = {cred: "allow" if matrix.expected(route, cred) else "deny" for cred, _ in matrix.CREDENTIALS}
    assert got == want


def test_readme_shows_the_matrix() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Authorization matrix", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|")) + "\n"
    assert table == matrix.markdown(), "README.md is stale: python -m cmglab.tools.reliability.matrix --markdown"
