"""Federated sign-in for fed.lab.test through the lab's federation service (WS-Trust 1.3 usernamemixed, MEX,
SAML 1.1): unmodified roadtx signs a federated user in and joins a device with that token; over httpx, the
assertion gives a PRT through a device-signed saml1_1-bearer request; a tampered or expired assertion is
refused with Entra's AADSTS code."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from cmglab.runtime.lab import Lab
from cmglab.services.entra.federation import FederationKey, FederationService
from cmglab.wire import prt_crypto
from tests.support.entra_device import DRS_RESOURCE, EntraClient, Joined, claims, entra_session, join_body, new_key
from tests.support.lab import lab_fixture
from tests.support.roadtx import Roadtx, roadtx_fixture

SAML11 = "urn:ietf:params:oauth:grant-type:saml1_1-bearer"


def carol(lab: Lab) -> tuple[str, str]:
    user = next(u for u in lab.config.primary_tenant.users if u.upn.endswith("@fed.lab.test"))
    return user.upn, user.password


RST = """<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope' xmlns:wsa='http://www.w3.org/2005/08/addressing'
 xmlns:wsu='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd'><s:Header>
<wsa:Action s:mustUnderstand='1'>http://docs.oasis-open.org/ws-sx/ws-trust/200512/RST/Issue</wsa:Action>
<wsse:Security s:mustUnderstand='1'
 xmlns:wsse='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>
<wsse:UsernameToken><wsse:Username>{user}</wsse:Username><wsse:Password>{password}</wsse:Password>
</wsse:UsernameToken></wsse:Security></s:Header><s:Body>
<wst:RequestSecurityToken xmlns:wst='http://docs.oasis-open.org/ws-sx/ws-trust/200512'>
<wsp:AppliesTo xmlns:wsp='http://schemas.xmlsoap.org/ws/2004/09/policy'><wsa:EndpointReference>
<wsa:Address>urn:federation:MicrosoftOnline</wsa:Address></wsa:EndpointReference></wsp:AppliesTo>
<wst:KeyType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Bearer</wst:KeyType>
<wst:RequestType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue</wst:RequestType>
</wst:RequestSecurityToken></s:Body></s:Envelope>"""


entra = lab_fixture("entra", session=entra_session)


def sts_assertion(entra: EntraClient, user: str, password: str) -> httpx.Response:
    realm = entra.http.get(f"{entra.login}/common/userrealm/{user}", params={"api-version": "1.0"}).json()
    assert realm["account_type"] == "Federated", realm
    return entra.http.post(
        realm["federation_active_auth_url"],
        content=RST.format(user=user, password=password),
        headers={"Content-Type": "application/soap+xml; charset=utf-8"},
    )


def raw_assertion(rstr: str) -> str:
    found = re.search(r"<trust:RequestedSecurityToken>(.*)</trust:RequestedSecurityToken>", rstr, re.S)
    assert found, rstr
    return found.group(1)


def saml_token(entra: EntraClient, assertion: str, resource: str = DRS_RESOURCE) -> httpx.Response:
    return entra.http.post(
        f"{entra.login}/common/oauth2/token",
        data={
            "client_id": "1b730954-1685-4b74-9bfd-dac224a7b894",
            "grant_type": SAML11,
            "resource": resource,
            "assertion": base64.b64encode(assertion.encode()).decode(),
        },
    )


def test_sts_assertion_gives_tokens_and_a_prt(entra: EntraClient, lab: Lab) -> None:
    user, password = carol(lab)
    bad = sts_assertion(entra, user, "wrong")
    assert bad.status_code == 500 and "FailedAuthentication" in bad.text
    reply = sts_assertion(entra, user, password)
    assert reply.status_code == 200, reply.text
    assertion = raw_assertion(reply.text)
    token = saml_token(entra, assertion)
    assert token.status_code == 200, token.text
    access = claims(token.json()["access_token"])
    assert access["upn"] == user and access["amr"] == ["fed"] and access["aud"] == DRS_RESOURCE
    # the federated user joins a device, then gets a PRT with the assertion in a device-signed request
    key, transport = new_key(), new_key()
    joined = entra.join(join_body(key, transport, name="LAB-FED", domain="fed.lab.test"), token.json()["access_token"])
    assert joined.status_code == 201, joined.text
    cert = x509.load_der_x509_certificate(base64.b64decode(joined.json()["Certificate"]["RawBody"]))
    device = Joined("", cert, key, Path("."), Path("."))
    fresh = raw_assertion(sts_assertion(entra, user, password).text)
    prt = entra.device_request(
        device,
        {
            "client_id": "38aa3b87-a06d-4817-b275-7a316988d93b",
            "scope": "openid aza ugs",
            "grant_type": SAML11,
            "assertion": base64.b64encode(fresh.encode()).decode(),
            "win_ver": "10.0.22631.4169",
        },
    )
    assert prt.status_code == 200, prt.text
    assert len(prt_crypto.open_session_key(prt.json()["session_key_jwe"], transport)) == 32
    assert claims(prt.json()["id_token"])["amr"] == ["fed", "rsa"]


def test_tampered_and_expired_assertions_are_refused(entra: EntraClient, lab: Lab) -> None:
    user, password = carol(lab)
    assertion = raw_assertion(sts_assertion(entra, user, password).text)
    tampered = assertion.replace(user, "alice@fed.lab.test")
    assert saml_token(entra, tampered).json()["error_codes"] == [50006]
    sts = FederationService(None, FederationKey(lab.dir / "data" / "federation"))  # type: ignore[arg-type]
    immutable = re.search(r"<saml:NameIdentifier[^>]*>([^<]+)<", assertion)
    assert immutable
    expired = sts.assertion("fed.lab.test", user, immutable.group(1), now=datetime.now(UTC) - timedelta(hours=3))
    assert saml_token(entra, expired).json()["error_codes"] == [50013]
    assert saml_token(entra, "<not-xml").json()["error_codes"] == [50008]
    ok = sts.assertion("fed.lab.test", user, immutable.group(1))
    assert saml_token(entra, ok).status_code == 200


# -- roadtx, unmodified ------------------------------------------------------------------------
roadtx = roadtx_fixture("roadtx-fed")


@pytest.mark.netns
def test_roadtx_federated_user_joins_a_device(roadtx: Roadtx, lab: Lab, tmp_path: Path) -> None:
    user, password = carol(lab)
    roadtx("gettokens", "-u", user, "-p", password, "-r", DRS_RESOURCE, cwd=tmp_path)
    tokens = json.loads((tmp_path / ".roadtools_auth").read_text())
    assert claims(tokens["accessToken"])["upn"] == user and claims(tokens["accessToken"])["amr"] == ["fed"]
    out = roadtx("device", "-a", "join", "-n", "LAB-FEDRTX", cwd=tmp_path).stdout
    assert re.search(r"Device ID: [0-9a-f-]{36}", out), out


def test_computer_assertion_is_for_the_drs_only(entra: EntraClient, lab: Lab) -> None:
    """A windowstransport-style assertion (accounttype DJ) gives a DRS token with the on-premises claims,
    nothing else: another resource is refused (AADSTS500011), a PRT too (AADSTS50008); a tampered SID breaks
    the signature (AADSTS50006)."""
    import uuid

    sts = FederationService(None, FederationKey(lab.dir / "data" / "federation"))  # type: ignore[arg-type]
    guid, sid = str(uuid.uuid4()), f"{lab.config.active_directory.domain_sid}-4242"
    extra = {
        ("accounttype", "http://schemas.microsoft.com/ws/2012/01"): "DJ",
        ("onpremobjectguid", "http://schemas.microsoft.com/identity/claims"): base64.b64encode(
            uuid.UUID(guid).bytes_le
        ).decode(),
        ("primarysid", "http://schemas.microsoft.com/ws/2008/06/identity/claims"): sid,
    }

    def fresh() -> str:  # an assertion is redeemed once: each check gets its own
        return sts.assertion("fed.lab.test", None, "x", extra=extra, method="urn:federation:authentication:windows")

    assertion = fresh()
    token = saml_token(entra, assertion)
    assert token.status_code == 200, token.text
    drs = claims(token.json()["access_token"])
    assert drs["account_type"] == "DJ" and drs["on_prem_id"] == guid and drs["primary_sid"] == sid
    assert drs["amr"] == ["wia"] and "refresh_token" not in token.json()
    assert saml_token(entra, fresh(), resource="https://ConfigMgrService").json()["error_codes"] == [500011]
    assert saml_token(entra, fresh().replace(sid, sid + "1")).json()["error_codes"] == [50006]
    key, transport = new_key(), new_key()
    joined = entra.join(join_body(key, transport, name="LAB-FEDPRT"), entra.drs_token())
    cert = x509.load_der_x509_certificate(base64.b64decode(joined.json()["Certificate"]["RawBody"]))
    prt = entra.device_request(
        Joined("", cert, key, Path("."), Path(".")),
        {
            "client_id": "38aa3b87-a06d-4817-b275-7a316988d93b",
            "scope": "openid aza ugs",
            "grant_type": SAML11,
            "assertion": base64.b64encode(fresh().encode()).decode(),
        },
    )
    assert prt.json()["error_codes"] == [50008]


def test_windowstransport_refuses_a_wrong_machine_password(entra: EntraClient, lab: Lab) -> None:
    import spnego

    realm = entra.http.get(f"{entra.login}/common/userrealm/x@fed.lab.test", params={"api-version": "1.0"}).json()
    endpoint = realm["federation_active_auth_url"].replace("usernamemixed", "windowstransport")
    ctx = spnego.client(
        f"{lab.config.active_directory.netbios_name}\\LAB01$",
        "wrong",
        hostname="sts.fed.lab.test",
        service="HTTP",
        protocol="ntlm",
    )
    headers = {"Content-Type": "application/soap+xml; charset=utf-8"}
    first = entra.http.post(
        endpoint,
        content=RST,
        headers={**headers, "Authorization": f"NTLM {base64.b64encode(ctx.step() or b'').decode()}"},
    )
    assert first.status_code == 401
    challenge = next(
        v.split(" ", 1)[1]
        for k, v in first.headers.multi_items()
        if k.lower() == "www-authenticate" and v.startswith("NTLM ")
    )
    second = entra.http.post(
        endpoint,
        content=RST,
        headers={
            **headers,
            "Authorization": f"NTLM {base64.b64encode(ctx.step(base64.b64decode(challenge)) or b'').decode()}",
        },
    )
    assert second.status_code == 401 and "RequestedSecurityToken" not in second.text
