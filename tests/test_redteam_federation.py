"""Red team on the lab federation service (sts.fed.lab.test, the AD FS stand-in) and Entra's saml1_1-bearer grant,
over the network:

- a WS-Trust message with a DTD (billion laughs, an external entity to /etc/passwd) is a SOAP fault
  (InvalidSecurity, HTTP 500 as AD FS answers faults), not an unhandled exception; the STS keeps answering;
- password guessing at usernamemixed is under the same smart lockout as Entra's password sign-in (AD FS
  extranet lockout): after `threshold` distinct wrong passwords even the right one is ID3242 until the period
  ends; without it the STS was an unlimited password oracle beside Entra's lockout;
- an assertion carrying a DTD at the token endpoint is AADSTS50006, as any unverifiable signature; a bearer
  assertion is redeemed once (a replay is AADSTS50013);

A lab of its own (a short lockout), so that no other test's user is locked.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import pytest

from cmglab.core.labconfig import DRS_RESOURCE, save_config
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses, isolated_lab
from tests.support.sec_attacks import client, wait_for

THRESHOLD, PERIOD = 3, 4
SOAP = {"Content-Type": "application/soap+xml; charset=utf-8"}
BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY a "aaaaaaaaaaaaaaaa">'
    + b"".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 16}">'.encode() for i in range(8))
    + b']><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Header>&i;</s:Header></s:Envelope>'
)
XXE = (
    b'<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Header>&x;</s:Header></s:Envelope>'
)
RST = """<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope' xmlns:wsa='http://www.w3.org/2005/08/addressing'>
<s:Header><wsse:Security xmlns:wsse='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>
<wsse:UsernameToken><wsse:Username>{user}</wsse:Username><wsse:Password>{password}</wsse:Password>
</wsse:UsernameToken></wsse:Security></s:Header><s:Body>
<wst:RequestSecurityToken xmlns:wst='http://docs.oasis-open.org/ws-sx/ws-trust/200512'>
<wsp:AppliesTo xmlns:wsp='http://schemas.xmlsoap.org/ws/2004/09/policy'><wsa:EndpointReference>
<wsa:Address>urn:federation:MicrosoftOnline</wsa:Address></wsa:EndpointReference></wsp:AppliesTo>
</wst:RequestSecurityToken></s:Body></s:Envelope>"""


# not lab_fixture: a lab of its own, lab.json's smart lockout changed before Entra starts
@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = isolated_lab(tmp_path_factory.mktemp("redteam-fed") / "lab")
    lab.config.smart_lockout.threshold = THRESHOLD
    lab.config.smart_lockout.duration_seconds = PERIOD
    save_config(lab.config, Lab.config_path(lab.dir))
    procs = LabProcesses(lab)
    procs.ensure("entra")
    yield lab
    procs.stop_all()


def federated_user(lab: Lab) -> tuple[str, str]:
    user = next(u for u in lab.config.primary_tenant.users if u.upn.endswith("@fed.lab.test"))
    return user.upn, user.password


def sts(lab: Lab, body: bytes) -> httpx.Response:
    with client(lab) as c:
        return c.post(
            f"{lab.url('entra', host='sts.fed.lab.test')}/adfs/services/trust/13/usernamemixed",
            content=body,
            headers=SOAP,
        )


def sign_in(lab: Lab, user: str, password: str) -> httpx.Response:
    return sts(lab, RST.format(user=user, password=password).encode())


@pytest.mark.parametrize("body", [BOMB, XXE], ids=["billion-laughs", "xxe"])
def test_a_dtd_is_a_soap_fault(fed: Lab, body: bytes) -> None:
    reply = sts(fed, body)
    assert reply.status_code == 500 and reply.headers["content-type"].startswith("application/soap+xml"), reply.text
    assert "a:InvalidSecurity" in reply.text and "ID3137" in reply.text
    assert "root:" not in reply.text  # nothing of /etc/passwd
    user, password = federated_user(fed)
    assert sign_in(fed, user, password).status_code == 200  # the STS still answers


def test_password_guessing_at_the_sts_is_locked_out(fed: Lab) -> None:
    user, password = federated_user(fed)
    for _ in range(THRESHOLD + 2):  # one stale password retried is counted once
        assert "FailedAuthentication" in sign_in(fed, user, "stale").text
    for n in range(THRESHOLD - 1):
        assert "FailedAuthentication" in sign_in(fed, user, f"guess-{n}").text
    locked = sign_in(fed, user, password)  # the right password, while locked
    assert locked.status_code == 500 and "ID3242" in locked.text, locked.text
    started = time.monotonic()
    wait_for(lambda: sign_in(fed, user, password).status_code == 200, PERIOD + 10, "the lockout to end")
    assert time.monotonic() - started < PERIOD + 10


def test_an_assertion_with_a_dtd_is_refused(fed: Lab) -> None:
    user, password = federated_user(fed)
    rstr = sign_in(fed, user, password)
    assert rstr.status_code == 200
    start = rstr.text.index("<saml:Assertion")
    assertion = rstr.text[start : rstr.text.index("</saml:Assertion>") + len("</saml:Assertion>")]
    doctype = '<!DOCTYPE saml:Assertion [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    with client(fed) as c:
        reply = c.post(
            f"{fed.url('entra')}/common/oauth2/token",
            data={
                "client_id": "1b730954-1685-4b74-9bfd-dac224a7b894",
                "resource": DRS_RESOURCE,
                "grant_type": "urn:ietf:params:oauth:grant-type:saml1_1-bearer",
                "assertion": base64.b64encode((doctype + assertion).encode()).decode(),
            },
        )
    assert reply.status_code == 400 and reply.json()["error_codes"] == [50006], reply.text


def test_anonymous_windowstransport_requests_write_nothing(fed: Lab) -> None:
    url = f"{fed.url('entra', host='sts.fed.lab.test')}/adfs/services/trust/13/windowstransport"
    users = fed.dir / "data" / "federation" / "ntlm-users"
    with client(fed) as c:
        assert c.post(url, content=b"<x/>", headers=SOAP).status_code == 401
        stamp = users.stat().st_mtime_ns
        for _ in range(20):
            reply = c.post(url, content=b"<x/>", headers=SOAP)
            assert reply.status_code == 401 and reply.headers.get_list("www-authenticate") == ["Negotiate", "NTLM"]
    assert users.stat().st_mtime_ns == stamp  # the account file was written once, not per request


def test_an_assertion_is_redeemed_once(fed: Lab) -> None:
    user, password = federated_user(fed)
    rstr = sign_in(fed, user, password).text
    assertion = rstr[rstr.index("<saml:Assertion") : rstr.index("</saml:Assertion>") + len("</saml:Assertion>")]
    form = {
        "client_id": "1b730954-1685-4b74-9bfd-dac224a7b894",
        "resource": DRS_RESOURCE,
        "grant_type": "urn:ietf:params:oauth:grant-type:saml1_1-bearer",
        "assertion": base64.b64encode(assertion.encode()).decode(),
    }
    with client(fed) as c:
        refused = c.post(f"{fed.url('entra')}/common/oauth2/token", data={**form, "resource": "https://nosuch"})
        first = c.post(f"{fed.url('entra')}/common/oauth2/token", data=form)
        replay = c.post(f"{fed.url('entra')}/common/oauth2/token", data=form)
    assert refused.status_code == 400  # a refused redemption does not spend it
    assert first.status_code == 200, first.text
    assert replay.status_code == 400 and replay.json()["error_codes"] == [50013], replay.text
    assert "already redeemed" in replay.json()["error_description"]
