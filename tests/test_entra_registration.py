"""Issue 17: registration with Entra auth in seed 001's order. The registration message carries a fresh Entra
token (`Authorization: Bearer` on `ccm_system_tokenauth`) through the CMG; the CMG validates it (Entra's keys,
issuer, audience = the site's AADRESOURCEURI, onboarded tenant, expiry) and the MP validates it again and admits it
(admission.py: approval 3, owner = the Entra device). Attacks over real sockets: forged, alg none, expired, other
tenant, wrong audience — refused at the CMG (its JSON error, CMGService.log, the MP never sees them) and at the
MP directly (401, ClientAuth.log); nothing written to the site database."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from cmglab.pki import builders as b
from cmglab.runtime.lab import Lab
from cmglab.tools.reliability.material import Material
from cmglab.wire import ccm_messaging as cm
from tests.support.client import SERVICES
from tests.support.cmg import cmg_health, log_after, log_offset, proxy_url, wait_for
from tests.support.lab import lab_fixture
from tests.support.sec_attacks import client, last_seq, records_after
from tests.support.sec_registration import Box, mp_https, site_client, site_rows

cmg_lab = lab_fixture(*SERVICES)


@pytest.fixture(scope="module")
def material(cmg_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Material:
    wait_for(lambda: cmg_health(cmg_lab)["site_config"], what="site configuration at the CMG")
    return Material(cmg_lab, tmp_path_factory.mktemp("entra-reg"))


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def _alg_none(m: Material) -> str:
    """The classic unsigned token: a valid-looking Entra body, `alg: none`, an empty signature."""
    now = int(time.time())
    tid = m.lab.config.primary_tenant.tenant_id
    claims: dict[str, Any] = {"aud": "https://ConfigMgrService", "iss": f"https://sts.windows.net/{tid}/", "tid": tid}
    claims |= {"iat": now, "nbf": now, "exp": now + 3600, "deviceid": str(uuid.uuid4()), "idtyp": "device"}
    header = {"alg": "none", "typ": "JWT", "kid": b.x5t(m.lab.pki.entra_signing.cert())}
    return f"{_b64(header)}.{_b64(claims)}."


def _expired(m: Material) -> str:
    past = int(time.time()) - 7200
    return m.entra_token(user=False, iat=past, nbf=past, exp=past + 600)


# attack -> (the token, the CMG's status and Error, the MP's verdict in ClientAuth.log)
ATTACKS: dict[str, tuple[Callable[[Material], str], int, str, str]] = {
    "forged": (lambda m: m.entra_token(user=False, key=b.new_key()), 401, "InvalidToken", "forged"),
    "alg-none": (_alg_none, 401, "InvalidToken", "forged"),
    "expired": (_expired, 401, "TokenExpired", "expired"),
    "other-tenant": (
        lambda m: m.entra_token(user=False, tenant_id=m.other_tenant_id),
        403,
        "TenantNotOnboarded",
        "other-tenant",
    ),
    "wrong-audience": (
        lambda m: m.entra_token(user=False, audience="https://graph.microsoft.com"),
        401,
        "InvalidToken",
        "wrong-audience",
    ),
}


def _post(lab: Lab, url: str, box: Box, token: str, sms_id: str = "") -> Any:
    with client(lab) as c:
        return c.request(
            "CCM_POST",
            url,
            content=box.message(sms_id),
            headers={"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT, "Authorization": f"Bearer {token}"},
        )


def register(lab: Lab, box: Box, token: str, sms_id: str = "", *, via_cmg: bool = True) -> dict[str, str]:
    """The ClientRegistrationResponse's attributes for a registration carrying `token`."""
    url = proxy_url(lab, "ccm_system_tokenauth/request") if via_cmg else f"{mp_https(lab)}/ccm_system_tokenauth/request"
    reply = _post(lab, url, box, token, sms_id)
    assert reply.status_code == 200, (reply.status_code, reply.text[:300])
    _, body = cm.decode_reply(reply.content, reply.headers.get("content-type"))
    return dict(cm.parse_xml(body).attrib)


def _clients(lab: Lab) -> list[dict[str, Any]]:
    return site_rows(lab, "clients")


REG_LOG, CLIENT_AUTH_LOG, CMG_LOG = "MP_RegistrationManager.log", "ClientAuth.log", "CMGService.log"


def _tokenauth_after(lab: Lab, seq: int) -> list[dict[str, Any]]:
    """The MP's records of ccm_system_tokenauth requests since `seq`, newest first."""
    return [r for r in records_after(lab, "management-point", seq) if "ccm_system_tokenauth" in (r.get("path") or "")]


def test_an_entra_token_registers_through_the_cmg_with_approval_3(cmg_lab: Lab, material: Material) -> None:
    device = str(uuid.uuid4())
    box = Box(f"AAD{uuid.uuid4().hex[:4].upper()}")
    seq, offset = last_seq(cmg_lab, "management-point"), log_offset(cmg_lab, "management-point", REG_LOG)
    attrs = register(cmg_lab, box, material.entra_token(user=False, deviceid=device))
    assert attrs["Status"] == "0" and attrs["ApprovalStatus"] == "3" and "PreAuthToken" not in attrs, attrs
    row = site_client(cmg_lab, attrs["SMSID"])
    assert (row["aad_device_id"], row["auth_kind"], row["signing_thumbprint"]) == (device, "aad", box.thumbprint)
    seen = wait_for(lambda: _tokenauth_after(cmg_lab, seq), what="the MP's record of the registration")
    # newest first: this test's request is the newest, and the only Entra token one since `seq`
    assert [r.get("auth_kind") for r in seen] == ["EntraToken"] and seen[0]["via"] == "connection-point", seen
    reg_log = log_after(cmg_lab, "management-point", REG_LOG, offset)
    assert f"Registering device using AAD auth: DeviceId='{device} ', TenantId='" in reg_log
    assert f"Processing Registration request from Client '{attrs['SMSID']}'" in reg_log


def test_a_user_token_of_a_device_registers_too(cmg_lab: Lab, material: Material) -> None:
    """The fallback (seed 001's sample run): the signed-in user's token, which names the device."""
    device = str(uuid.uuid4())
    attrs = register(cmg_lab, Box("AADUSER"), material.entra_token(user=True, deviceid=device))
    assert attrs["Status"] == "0" and attrs["ApprovalStatus"] == "3", attrs
    assert site_client(cmg_lab, attrs["SMSID"])["aad_device_id"] == device


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_bad_entra_token_is_refused_at_the_cmg(cmg_lab: Lab, material: Material, attack: str) -> None:
    make, status, error, _ = ATTACKS[attack]
    seq, before_clients = last_seq(cmg_lab, "management-point"), _clients(cmg_lab)
    offset = log_offset(cmg_lab, "cmg", CMG_LOG)
    reply = _post(cmg_lab, proxy_url(cmg_lab, "ccm_system_tokenauth/request"), Box("EVIL"), make(material))
    assert reply.status_code == status and reply.json()["Error"] == error, reply.text
    assert _tokenauth_after(cmg_lab, seq) == []  # the site never saw it
    assert _clients(cmg_lab) == before_clients
    assert re.search(
        rf"CCM_POST /CCM_Proxy_ServerAuth/\d+/ccm_system_tokenauth/request from \S+: {status} {error}: ",
        log_after(cmg_lab, "cmg", CMG_LOG, offset),
    )


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_bad_entra_token_is_refused_by_the_mp_itself(cmg_lab: Lab, material: Material, attack: str) -> None:
    """Past the CMG (the MP's own door on the internal network): the MP validates again and refuses with 401
    (admission.entra_refusal) before it reads the message, as it refuses a bad CCM token."""
    make, _, _, verdict = ATTACKS[attack]
    before, offset = _clients(cmg_lab), log_offset(cmg_lab, "management-point", CLIENT_AUTH_LOG)
    reply = _post(cmg_lab, f"{mp_https(cmg_lab)}/ccm_system_tokenauth/request", Box("EVILMP"), make(material))
    assert reply.status_code == 401 and "invalid_token" in reply.headers["www-authenticate"], reply.text
    assert reply.json()["detail"].startswith("Entra token refused: the Entra token")
    assert _clients(cmg_lab) == before  # nothing written
    assert re.search(
        rf"CCM_POST /ccm_system_tokenauth/request: Entra token refused \({verdict}\): ",
        log_after(cmg_lab, "management-point", CLIENT_AUTH_LOG, offset),
    )


def test_an_entra_token_cannot_take_over_another_devices_record(cmg_lab: Lab, material: Material) -> None:
    victim, attacker = Box("VICTIMAAD"), Box("EVILAAD")
    own = register(cmg_lab, victim, material.entra_token(user=False, deviceid=str(uuid.uuid4())))
    before = site_client(cmg_lab, own["SMSID"])
    evil = register(cmg_lab, attacker, material.entra_token(user=False, deviceid=str(uuid.uuid4())), own["SMSID"])
    assert evil["Status"] == "0" and evil["SMSID"] != own["SMSID"], evil
    assert site_client(cmg_lab, own["SMSID"]) == before
    # the same Entra device with a new key (a reinstalled client) still updates its own record
    device = before["aad_device_id"]
    again = register(cmg_lab, Box("VICTIMAAD"), material.entra_token(user=False, deviceid=device), own["SMSID"])
    assert again["SMSID"] == own["SMSID"] and again["ApprovalStatus"] == "3"


def test_an_entra_token_admits_registration_only(cmg_lab: Lab, material: Material) -> None:
    """Past the CMG's door an Entra token is no CCM token: any other message is refused by the MP with 403
    (authenticated, not authorised: a 401 would ask for credentials the caller already presented)."""
    box = Box("AADPOLICY")
    header = cm.MsgHeader(
        target_endpoint="MP_LocationManager",
        target_host=cmg_lab.config.hosts.management_point,
        source_host=box.name,
        reply_to=f"direct:{box.name}:SccmMessaging",
    )
    body = '<SiteInformationRequest SchemaVersion="1.00"><SiteCode Name="MEM" /></SiteInformationRequest>'
    offset = log_offset(cmg_lab, "management-point", CLIENT_AUTH_LOG)
    with client(cmg_lab) as c:
        reply = c.request(
            "CCM_POST",
            proxy_url(cmg_lab, "ccm_system_tokenauth/request"),
            content=cm.encode_request(header, body),
            headers={
                "Content-Type": cm.CONTENT_TYPE,
                "Authorization": f"Bearer {material.entra_token(user=False)}",
            },
        )
    assert reply.status_code == 403, reply.text
    assert "admits MP_ClientRegistration only" in log_after(cmg_lab, "management-point", CLIENT_AUTH_LOG, offset)


# -- one Entra rule at every door (review finding 1): tenant A's token carrying tenant B's audience ----------------
TENANT_B_URI, TENANT_B_APP = "https://ConfigMgrService-TenantB", str(uuid.uuid4())


def _tenant_row(lab: Lab, tenant_id: str, **values: Any) -> dict[str, Any]:
    """Set columns of a tenant's row in the site database (a second onboarding, with its own server app);
    the old values back."""
    from cmglab.services.management_point.store import Store, Tenant

    with Store(lab, seed=False).session() as s:
        row = s.get(Tenant, tenant_id)
        assert row is not None
        old = {k: getattr(row, k) for k in values}
        for k, v in values.items():
            setattr(row, k, v)
    return old


def _cmg_sts_error(lab: Lab, token: str) -> str:
    with client(lab) as c:
        reply = c.post(proxy_url(lab, "CCM_STS"), json=Box("PROBE").proof("AAD", token), headers=_bearer(token))
    return str(reply.json().get("Error", ""))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tenant_b(cmg_lab: Lab, material: Material) -> Any:
    """The lab's second tenant onboarded with its own resource URI and server app ID, until the CMG holds it
    (its published configuration); put back as it was afterwards, until the CMG has dropped it again."""
    tid = material.other_tenant_id
    old = _tenant_row(cmg_lab, tid, onboarded=True, resource_uri=TENANT_B_URI, server_app_id=TENANT_B_APP)
    # B's own token without a device passes the CMG once it holds B (the MP then refuses it: InvalidProof)
    own = material.entra_token(user=False, tenant_id=tid, audience=TENANT_B_URI, deviceid=None)
    try:
        wait_for(lambda: _cmg_sts_error(cmg_lab, own) == "InvalidProof", timeout=60, what="tenant B at the CMG")
        yield tid
    finally:
        _tenant_row(cmg_lab, tid, **old)
        # B's token with B's OWN audience: "not onboarded" comes before the audience (review 2, finding 2)
        back = material.entra_token(user=False, tenant_id=tid, audience=TENANT_B_URI, deviceid=None)
        wait_for(lambda: _cmg_sts_error(cmg_lab, back) == "TenantNotOnboarded", timeout=60, what="B gone at the CMG")


@pytest.mark.parametrize("audience", [TENANT_B_URI, TENANT_B_APP], ids=["resource-uri", "server-app-id"])
def test_a_token_of_tenant_a_with_tenant_bs_audience_is_refused_at_every_door(
    cmg_lab: Lab, material: Material, tenant_b: str, audience: str
) -> None:
    """Both tenants onboarded: tenant A's token whose audience is tenant B's resource URI (or server app ID) is
    refused at the CMG's CCM_STS and registration path, the MP's CCM_STS and its ccm_system_tokenauth
    registration; the site writes nothing (no client, no issued token)."""
    token = material.entra_token(user=False, audience=audience)  # the primary tenant (A)
    clients, tokens = _clients(cmg_lab), site_rows(cmg_lab, "tokens")
    seq = last_seq(cmg_lab, "management-point")
    offset = log_offset(cmg_lab, "management-point", CLIENT_AUTH_LOG)
    box = Box("CROSSTENANT")
    with client(cmg_lab) as c:
        cmg_sts = c.post(proxy_url(cmg_lab, "CCM_STS"), json=box.proof("AAD", token), headers=_bearer(token))
    assert cmg_sts.status_code == 401 and cmg_sts.json()["Error"] == "InvalidToken", cmg_sts.text
    cmg_reg = _post(cmg_lab, proxy_url(cmg_lab, "ccm_system_tokenauth/request"), box, token)
    assert cmg_reg.status_code == 401 and cmg_reg.json()["Error"] == "InvalidToken", cmg_reg.text
    forwarded = [r for r in records_after(cmg_lab, "management-point", seq) if "CCM_Cloud" not in r["path"]]
    assert forwarded == [], forwarded  # the CMG forwarded neither (the connection point's config polls aside)
    with client(cmg_lab) as c:
        mp_sts = c.post(f"{mp_https(cmg_lab)}/CCM_STS", json=box.proof("AAD", token), headers=_bearer(token))
    assert mp_sts.status_code == 401 and mp_sts.json()["Error"] == "InvalidProof", mp_sts.text
    assert "is not tenant" in mp_sts.json()["Reason"], mp_sts.text
    mp_reg = _post(cmg_lab, f"{mp_https(cmg_lab)}/ccm_system_tokenauth/request", box, token)
    assert mp_reg.status_code == 401 and "invalid_token" in mp_reg.headers["www-authenticate"], mp_reg.text
    assert re.search(
        r"CCM_POST /ccm_system_tokenauth/request: Entra token refused \(wrong-audience\): ",
        log_after(cmg_lab, "management-point", CLIENT_AUTH_LOG, offset),
    )
    assert (_clients(cmg_lab), site_rows(cmg_lab, "tokens")) == (clients, tokens)  # nothing written
    # tenant B's own token with that audience is the control: it passes the rule (and registers)
    own = material.entra_token(user=False, tenant_id=tenant_b, audience=audience)
    assert register(cmg_lab, Box("TENANTB"), own)["ApprovalStatus"] == "3"


def _mp_sts(lab: Lab, token: str) -> tuple[int, str]:
    with client(lab) as c:
        reply = c.post(f"{mp_https(lab)}/CCM_STS", json=Box("PROBE").proof("AAD", token), headers=_bearer(token))
    return reply.status_code, str(reply.json().get("Error", ""))


def test_every_tenant_offboarded_gives_tenant_not_onboarded(cmg_lab: Lab, material: Material) -> None:
    """Seed 003/004's symptom with no tenant onboarded at all: the primary tenant's token (its own audience) gets
    403 TenantNotOnboarded at the CMG's and the MP's CCM_STS, not a 401 wrong audience (the audience is checked
    against the token's own tenant, after the tenant; review 2, finding 2)."""
    tid = cmg_lab.config.primary_tenant.tenant_id
    token = material.entra_token(user=False, deviceid=None)
    old = _tenant_row(cmg_lab, tid, onboarded=False)
    try:
        wait_for(lambda: _cmg_sts_error(cmg_lab, token) == "TenantNotOnboarded", timeout=60, what="A gone at the CMG")
        with client(cmg_lab) as c:
            cmg_sts = c.post(proxy_url(cmg_lab, "CCM_STS"), json=Box("OFF").proof("AAD", token), headers=_bearer(token))
        assert cmg_sts.status_code == 403 and cmg_sts.json()["Error"] == "TenantNotOnboarded", cmg_sts.text
        assert _mp_sts(cmg_lab, token) == (403, "TenantNotOnboarded")
    finally:
        _tenant_row(cmg_lab, tid, **old)
        wait_for(lambda: _cmg_sts_error(cmg_lab, token) == "InvalidProof", timeout=60, what="A back at the CMG")
