"""CCM_STS: ClientToken (and its renewal), Certificate, AAD proofs; the seed's CCM_STS.log lines;
Entra registration (approval 3) on ccm_system_tokenauth."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from tests.support.agent import run
from tests.support.lab import lab_fixture
from tests.support.mp import (
    Device,
    ccm_post,
    client,
    http_url,
    https_url,
    lab_rows,
    register,
    reply_body,
    set_site,
    wait_log,
)

mp = lab_fixture("management-point")


def sts(mp: Lab, bearer: str | None, doc: object, cert: object = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    with client(mp, cert=cert) as c:  # type: ignore[arg-type]
        r = c.post(f"{https_url(mp)}/CCM_STS", json=doc, headers=headers)
    return r.status_code, r.json()


@pytest.fixture(scope="module")
def token_client(mp: Lab) -> tuple[Device, str]:
    set_site(mp, auto_approve="all")
    try:
        d = Device("STS01")
        attrs = register(mp, d)
    finally:
        set_site(mp, auto_approve=mp.config.site.auto_approve)
    return d, attrs["PreAuthToken"]


def test_client_token_proof(mp: Lab, token_client: tuple[Device, str]) -> None:
    device, unique = token_client
    status, reply = sts(mp, unique, device.proof("ClientToken", unique))
    assert status == 200 and reply["TokenType"] == "Device" and "ClientToken" not in reply
    claims = jwt.decode(reply["Token"], options={"verify_signature": False})
    assert claims["iss"] == f"urn:sccm:oauth2:{mp.config.site.hierarchy_id}" and claims["aud"] == "urn:sccm:service"
    assert claims["exp"] - claims["nbf"] == 8 * 3600 and claims["DeviceId"] == device.sms_id
    for line in (
        "ProcessRequest - Start",
        r"Incoming request URL: https://\S+/CCM_STS",
        "Issued token",
        "Return token to client",
    ):
        wait_log(mp, "CCM_STS.log", line)


def test_client_token_renewal(mp: Lab, token_client: tuple[Device, str]) -> None:
    device, unique = token_client
    status, reply = sts(mp, unique, device.proof("ClientToken", unique, RenewClientToken=True))
    assert status == 200 and reply["ClientToken"] != unique
    fresh = jwt.decode(reply["ClientToken"], options={"verify_signature": False})
    assert fresh["DeviceId"] == device.sms_id and fresh["exp"] - fresh["nbf"] == 90 * 86400
    # a token older than a month is renewed without being asked (monthly renewal)
    from cmglab.runtime.certinfo import thumbprint

    old, _ = mp.site_signer().client_token(
        sms_id=device.sms_id or "", cert_thumbprint=thumbprint(device.cert), now=datetime.now(UTC) - timedelta(days=31)
    )
    status, reply = sts(mp, old, device.proof("ClientToken", old))
    assert status == 200 and "ClientToken" in reply
    # an expired one cannot be exchanged: the client must come back to the intranet
    expired, _ = mp.site_signer().client_token(
        sms_id=device.sms_id or "", cert_thumbprint=thumbprint(device.cert), now=datetime.now(UTC) - timedelta(days=91)
    )
    status, reply = sts(mp, expired, device.proof("ClientToken", expired))
    assert status == 401 and reply["Error"] == "TokenExpired"


def test_client_token_needs_the_paired_key(mp: Lab, token_client: tuple[Device, str]) -> None:
    _, unique = token_client
    thief = Device("STS02")
    status, reply = sts(mp, unique, thief.proof("ClientToken", unique))
    assert status == 401 and reply["Error"] == "InvalidProof"
    status, reply = sts(mp, unique, {**thief.proof("ClientToken", unique), "Signature": "00" * 256})
    assert status == 401


def test_certificate_proof(mp: Lab) -> None:
    ident = mp.pki.issue_client("sts-pki01")
    status, reply = sts(mp, None, {"ProofType": "Certificate"}, cert=(ident.cert_path, ident.key_path))
    assert status == 200 and reply["TokenType"] == "Device"
    status, reply = sts(mp, None, {"ProofType": "Certificate"})
    assert status == 403 and reply["Error"] == "CertificateRequired"


def test_bad_requests(mp: Lab) -> None:
    assert sts(mp, None, {"ProofType": "Magic"})[1]["Error"] == "InvalidRequest"
    assert sts(mp, None, ["not", "an", "object"])[0] == 400
    with client(mp) as c:
        r = c.post(f"{https_url(mp)}/CCM_STS", content=b"{not json")
        assert r.status_code == 400 and r.json()["Error"] == "InvalidRequest"
        r = c.post(f"{http_url(mp)}/CCM_STS", json={"ProofType": "Certificate"})
        assert r.status_code == 403  # the token service is HTTPS only
    status, reply = sts(mp, "garbage", Device().proof("ClientToken", "garbage"))
    assert status == 401 and reply["Error"] == "InvalidProof"


# -- Entra (needs the Entra service: its JWKS is what the MP validates against) -------------------


entra = lab_fixture("management-point", "entra")


def entra_token(
    lab: Lab,
    *,
    tenant: str | None = None,
    audience: str = "https://ConfigMgrService",
    device_id: str | None = None,
    user: bool = True,
    key: object = None,
    lifetime: int = 3600,
) -> str:
    """An Entra-shaped v1 access token signed with the lab's Entra signing key (kid = x5t)."""
    from cmglab.pki.builders import x5t

    t = lab.config.primary_tenant if tenant is None else next(x for x in lab.config.tenants if x.tenant_id == tenant)
    now = int(time.time())
    u = t.users[0]
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{t.tenant_id}/",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "tid": t.tenant_id,
        "oid": u.object_id if user else str(uuid.uuid4()),
        "deviceid": device_id or str(uuid.uuid4()),
        "idtyp": "user" if user else "device",
        "appid": lab.config.apps[0].app_id,
        "ver": "1.0",
    }
    if user:
        claims.update(upn=u.upn, unique_name=u.upn, scp="user_impersonation", onprem_sid=u.onprem_sid or "")
    signing = lab.pki.entra_signing
    kid = x5t(signing.cert())
    signer: Any = key or signing.key()
    return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": kid, "x5t": kid})


def test_aad_proof_and_entra_registration(entra: Lab) -> None:
    mp = entra
    device_id = str(uuid.uuid4())
    device = Device("AAD01")
    token = entra_token(mp, device_id=device_id)
    status, reply = sts(mp, token, {"ProofType": "AAD", "ClientId": None})
    assert status == 200, reply
    assert reply["TokenType"] == "UDA"
    tid = mp.config.primary_tenant.tenant_id
    wait_log(
        mp,
        "CCM_STS.log",
        rf"Validated AAD token\. TokenType: UDA TenantId: {tid} UserId: [0-9a-f-]{{36}} "
        rf"DeviceId: {device_id} OnPrem_UserSid: \S* OnPrem_DeviceSid:",
    )
    wait_log(mp, "CCM_STS.log", "TokenType is UDA")
    wait_log(
        mp,
        "CCM_STS.log",
        r"Created SCCM token, token type: UDA, hierarchyId: [0-9a-f-]{36}, "
        r"userId: [0-9a-f-]{36}, deviceId: GUID:[0-9A-F-]{36}",
    )
    with client(mp) as c:
        resp = ccm_post(
            c,
            f"{https_url(mp)}/ccm_system_tokenauth/request",
            device.registration_message(),
            {"Authorization": f"Bearer {reply['Token']}"},
        )
        root = cm.parse_xml(reply_body(resp))
    assert root.get("Status") == "0" and root.get("ApprovalStatus") == "3" and root.get("PreAuthToken") is None
    wait_log(
        mp,
        "MP_RegistrationManager.log",
        rf"Registering device using AAD auth: DeviceId='{device_id}\s*', TenantId='{tid}'",
    )
    wait_log(mp, "MP_RegistrationManager.log", rf"Processing Registration request from Client '{root.get('SMSID')}'")
    row = next(r for r in lab_rows(mp, "clients") if r["sms_id"] == root.get("SMSID"))
    assert row["auth_kind"] == "aad" and row["aad_device_id"] == device_id and row["approval"] == 3
    # after registration the CCM token names the registered ClientID
    status, again = sts(mp, entra_token(mp, device_id=device_id), {"ProofType": "AAD", "ClientId": root.get("SMSID")})
    assert jwt.decode(again["Token"], options={"verify_signature": False})["DeviceId"] == root.get("SMSID")


def test_aad_device_token_is_device_type(entra: Lab) -> None:
    status, reply = sts(entra, entra_token(entra, user=False), {"ProofType": "AAD"})
    assert status == 200 and reply["TokenType"] == "Device"


def test_aad_refusals(entra: Lab) -> None:
    mp = entra
    other = next(t for t in mp.config.tenants if not t.onboarded)
    status, reply = sts(mp, entra_token(mp, tenant=other.tenant_id), {"ProofType": "AAD"})
    assert status == 403 and reply["Error"] == "TenantNotOnboarded"
    status, reply = sts(
        mp, entra_token(mp, audience="urn:ms-drs:enterpriseregistration.windows.net"), {"ProofType": "AAD"}
    )
    assert status == 401 and reply["Error"] == "InvalidProof" and "audience" in reply["Reason"]
    status, reply = sts(mp, entra_token(mp, lifetime=-600), {"ProofType": "AAD"})
    assert status == 401 and reply["Error"] == "TokenExpired"
    from cmglab.pki.builders import new_key

    status, reply = sts(mp, entra_token(mp, key=new_key()), {"ProofType": "AAD"})
    assert status == 401 and reply["Error"] == "InvalidProof"
    wait_log(mp, "CCM_STS.log", r"Failed to issue token \(AAD proof\): TenantNotOnboarded")


def test_a_known_entra_token_is_refused_once_its_tenant_is_offboarded(entra: Lab) -> None:
    """The MP knows an accepted Entra token by its text only under the same rule (entra_known.py, issue 20): its
    tenant offboarded live (`cmglab tenant offboard`), the same token is refused at the next request; onboarded
    again, it is admitted."""
    token, tenant = entra_token(entra), entra.config.primary_tenant.tenant_id
    for _ in range(2):  # accepted, then known
        assert sts(entra, token, {"ProofType": "AAD"})[0] == 200
    assert run("cmglab", "tenant", "offboard", tenant, "--lab", str(entra.dir)).returncode == 0
    try:
        status, reply = sts(entra, token, {"ProofType": "AAD"})
        assert status == 403 and reply["Error"] == "TenantNotOnboarded"
    finally:
        assert run("cmglab", "tenant", "onboard", tenant, "--lab", str(entra.dir)).returncode == 0
    assert sts(entra, token, {"ProofType": "AAD"})[0] == 200


def test_ccm_token_lifetime_is_the_site_setting(mp: Lab, token_client: tuple[Device, str]) -> None:
    """`cmglab site set ccm-token-lifetime MINUTES` applies to the running MP's next token."""
    device, unique = token_client

    def site_set(value: str) -> None:
        result = run("cmglab", "site", "set", "ccm-token-lifetime", value, "--lab", str(mp.dir))
        assert result.returncode == 0, result.stdout + result.stderr

    site_set("30")
    try:
        status, reply = sts(mp, unique, device.proof("ClientToken", unique))
        assert status == 200
        claims = jwt.decode(reply["Token"], options={"verify_signature": False})
        assert claims["exp"] - claims["nbf"] == 30 * 60
    finally:
        site_set("480")
