"""`/ccm_system_windowsauth`: IIS-style 401 (Negotiate, NTLM), a real NTLM exchange with the lab's
domain accounts (pyspnego as the client), and auto-approval of domain-authenticated registrations."""

from __future__ import annotations

import base64
import uuid

import httpx
import spnego

from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from tests.support.lab import lab_fixture
from tests.support.mp import Device, client, http_url, https_url, lab_rows, reply_body, wait_log

mp = lab_fixture("management-point")


def account(lab: Lab, name: str) -> tuple[str, str]:
    a = next(x for x in lab.config.active_directory.accounts if x.name == name)
    return a.name, a.password


def ntlm_post(
    c: httpx.Client,
    url: str,
    raw: bytes,
    user: str,
    password: str,
    scheme: str = "NTLM",
    protocol: str = "ntlm",
    anonymous_first: bool = True,
) -> httpx.Response:
    """requests_ntlm's dance on one connection: anonymous → 401, negotiate → challenge, authenticate."""
    headers = {"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT}
    if anonymous_first:
        first = c.request("CCM_POST", url, content=raw, headers=headers)
        assert first.status_code == 401
        assert first.headers.get_list("www-authenticate") == ["Negotiate", "NTLM"]
    ctx = spnego.client(user, password, hostname="mp.corp.lab.test", service="HTTP", protocol=protocol)
    token = ctx.step() or b""
    challenge = c.request(
        "CCM_POST",
        url,
        content=raw,
        headers={**headers, "Authorization": f"{scheme} {base64.b64encode(token).decode()}"},
    )
    assert challenge.status_code == 401
    value = challenge.headers["www-authenticate"]
    assert value.startswith(f"{scheme} ")
    token = ctx.step(base64.b64decode(value.split(" ", 1)[1])) or b""
    return c.request(
        "CCM_POST",
        url,
        content=raw,
        headers={**headers, "Authorization": f"{scheme} {base64.b64encode(token or b'').decode()}"},
    )


def test_probe_answers_401_with_both_schemes(mp: Lab) -> None:
    with client(mp) as c:
        for base in (http_url(mp), https_url(mp)):
            r = c.get(f"{base}/ccm_system_windowsauth/")
            assert r.status_code == 401
            assert r.headers.get_list("www-authenticate") == ["Negotiate", "NTLM"]
            assert "401 - Unauthorized" in r.text


def test_computer_account_registration_is_auto_approved(mp: Lab) -> None:
    user, password = account(mp, "LAB01$")
    device = Device("LAB01")
    with client(mp) as c:
        resp = ntlm_post(
            c,
            f"{http_url(mp)}/ccm_system_windowsauth/request",
            device.registration_message(),
            f"CORP\\{user}",
            password,
        )
    root = cm.parse_xml(reply_body(resp))
    assert root.get("Status") == "0" and root.get("ApprovalStatus") == "1" and root.get("PreAuthToken")
    row = next(r for r in lab_rows(mp, "clients") if r["sms_id"] == root.get("SMSID"))
    assert row["auth_kind"] == "domain" and row["domain_account"] == "CORP\\LAB01$" and row["approval"] == 1
    wait_log(mp, "ClientAuth.log", r"Windows authentication succeeded for CORP\\LAB01\$")
    wait_log(mp, "MP_RegistrationManager.log", r"Registering device authenticated as domain account CORP\\LAB01\$")


def test_user_account_with_negotiate_over_https(mp: Lab) -> None:
    user, password = account(mp, "alice")
    device = Device("LAB02")
    with client(mp) as c:
        resp = ntlm_post(
            c,
            f"{https_url(mp)}/ccm_system_windowsauth/request",
            device.registration_message(),
            user,
            password,
            scheme="Negotiate",
            protocol="negotiate",
        )
    assert cm.parse_xml(reply_body(resp)).get("ApprovalStatus") == "1"


def test_wrong_password_and_unknown_account(mp: Lab) -> None:
    user, _ = account(mp, "LAB01$")
    for name, password in ((f"CORP\\{user}", "wrong"), ("CORP\\nobody$", "whatever")):
        device = Device("LAB03")
        with client(mp) as c:
            resp = ntlm_post(
                c, f"{http_url(mp)}/ccm_system_windowsauth/request", device.registration_message(), name, password
            )
        assert resp.status_code == 401
        assert resp.headers.get_list("www-authenticate") == ["Negotiate", "NTLM"]
    wait_log(mp, "ClientAuth.log", r"Windows authentication failed on /ccm_system_windowsauth/request")
    assert "LAB03" not in {r["netbios_name"] for r in lab_rows(mp, "clients")}


def test_garbage_authorization(mp: Lab) -> None:
    with client(mp) as c:
        r = c.request(
            "CCM_POST",
            f"{http_url(mp)}/ccm_system_windowsauth/request",
            content=b"x",
            headers={"Authorization": "NTLM !!!notbase64"},
        )
        assert r.status_code == 401
        r = c.request(
            "CCM_POST",
            f"{http_url(mp)}/ccm_system_windowsauth/request",
            content=b"x",
            headers={"Authorization": "NTLM " + base64.b64encode(b"NTLMSSP\x00\x03garbage").decode()},
        )
        assert r.status_code == 401


def test_authentication_lasts_for_the_connection(mp: Lab) -> None:
    """IIS: once the handshake completes, later requests on the keep-alive connection are the account's."""
    user, password = account(mp, "LAB01$")
    with client(mp) as c:
        first = ntlm_post(c, f"{http_url(mp)}/ccm_system_windowsauth/request", b"", f"CORP\\{user}", password)
        assert first.status_code == 200
        device = Device("LAB04")
        again = c.request(
            "CCM_POST",
            f"{http_url(mp)}/ccm_system_windowsauth/request",  # no Authorization
            content=device.registration_message(),
            headers={"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT},
        )
        assert again.status_code == 200
        assert cm.parse_xml(reply_body(again)).get("ApprovalStatus") == "1"
        policy = c.get(f"{http_url(mp)}/sms_mp_windowsauth/.sms_aut?MPLIST")
        assert policy.status_code != 401
    row = next(r for r in lab_rows(mp, "clients") if r["netbios_name"] == "LAB04")
    assert row["domain_account"] == "CORP\\LAB01$"
    with client(mp) as other:  # a new connection is anonymous
        r = other.request("CCM_POST", f"{http_url(mp)}/ccm_system_windowsauth/request", content=b"x")
        assert r.status_code == 401


def test_negotiate_over_https_lasts_for_the_connection(mp: Lab) -> None:
    """Negotiate (SPNEGO) over TLS persists as NTLM does (IIS authPersistNonNTLM): the next request on the
    connection, without an Authorization header, is the account's; another connection is anonymous."""
    user, password = account(mp, "alice")
    url = f"{https_url(mp)}/ccm_system_windowsauth/request"
    with client(mp) as c:
        assert ntlm_post(c, url, b"", user, password, scheme="Negotiate", protocol="negotiate").status_code == 200
        device = Device("LAB06")
        again = c.request(
            "CCM_POST",
            url,  # no Authorization
            content=device.registration_message(),
            headers={"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT},
        )
        assert again.status_code == 200
        assert cm.parse_xml(reply_body(again)).get("ApprovalStatus") == "1"
    with client(mp) as other:
        assert other.request("CCM_POST", url, content=b"x").status_code == 401


def test_failed_handshake_leaves_the_connection_anonymous(mp: Lab) -> None:
    user, password = account(mp, "LAB01$")
    with client(mp) as c:
        url = f"{http_url(mp)}/ccm_system_windowsauth/request"
        assert ntlm_post(c, url, b"", f"CORP\\{user}", password).status_code == 200
        wrong = ntlm_post(c, url, b"", f"CORP\\{user}", "wrong", anonymous_first=False)
        assert wrong.status_code == 401
        r = c.request("CCM_POST", f"{http_url(mp)}/ccm_system_windowsauth/request", content=b"x")
        assert r.status_code == 401


def test_sms_mp_windowsauth_needs_windows_authentication(mp: Lab) -> None:
    with client(mp) as c:
        r = c.get(f"{http_url(mp)}/sms_mp_windowsauth/.sms_aut?MPLIST")
        assert r.status_code == 401
        assert r.headers.get_list("www-authenticate") == ["Negotiate", "NTLM"]


def test_domain_computer_created_while_the_mp_runs_authenticates_without_a_restart(mp: Lab) -> None:
    """Issue 16: `cmglab device create --domain` adds NAME$ to lab.json while the MP runs; the running MP
    accepts it at its next NTLM handshake and auto-approves the domain registration."""
    from cmglab.tools.devicecli import computer_account

    name = f"LATE{uuid.uuid4().hex[:6].upper()}"
    with client(mp) as c:  # the MP has served a handshake before the account exists
        before = ntlm_post(
            c,
            f"{http_url(mp)}/ccm_system_windowsauth/request",
            Device(name).registration_message(),
            f"CORP\\{name}$",
            "not-yet-an-account",
        )
        assert before.status_code == 401
    account = computer_account(mp, name)
    device = Device(name)
    with client(mp) as c:
        resp = ntlm_post(
            c,
            f"{http_url(mp)}/ccm_system_windowsauth/request",
            device.registration_message(),
            f"CORP\\{account.name}",
            account.password,
        )
    assert resp.status_code == 200, resp.text
    root = cm.parse_xml(reply_body(resp))
    assert root.get("Status") == "0" and root.get("ApprovalStatus") == "1" and root.get("PreAuthToken")
