"""MP_PolicyManager and `.sms_pol`: assignments for a signed registered client, policy bodies,
secret policies only to the registered key, as CMS to its encryption certificate; `.sms_aut`."""

from __future__ import annotations

import hashlib
import re
from xml.sax.saxutils import quoteattr

import pytest

from cmglab.runtime.lab import Lab
from cmglab.services.management_point.policy_crypto import deobfuscate_secret
from cmglab.wire import ccm_messaging as cm
from tests.support.lab import lab_fixture, set_site, set_site_in_lab_json
from tests.support.mp import (
    Device,
    ccm_post,
    client,
    cms_decrypt,
    http_url,
    https_url,
    lab_rows,
    register,
    reply_body,
    wait_log,
)

mp = lab_fixture("management-point", site={"auto_approve": "all"})


@pytest.fixture(scope="module")
def device(mp: Lab) -> Device:
    d = Device("POL01")
    register(mp, d)
    return d


def assignments(mp: Lab, device: Device) -> str:
    with client(mp) as c:
        resp = ccm_post(
            c,
            f"{http_url(mp)}/ccm_system/request",
            device.signed_message("MP_PolicyManager", device.assignments_body()),
        )
    return reply_body(resp)


def test_reply_assignments_shape(mp: Lab, device: Device) -> None:
    body = assignments(mp, device)
    root = cm.parse_xml(body)
    assert root.tag == "ReplyAssignments"
    assert root.findtext("Identification/Machine/ClientID") == device.sms_id
    pas = root.findall("PolicyAssignment")
    assert {p.find("Policy").get("PolicyCategory") for p in pas} >= {"NAAConfig", "ClientAgentConfig"}  # type: ignore[union-attr]
    for pa in pas:
        pol = pa.find("Policy")
        assert pol is not None and pol[0].tag == "PolicyLocation"  # first child (SCCMSecrets)
        assert re.fullmatch(r"http://<mp>/SMS_MP/\.sms_pol\?\{[0-9A-F-]{36}\}\.\d_\d\d", pol[0].text or "")
    assert re.search(r'PolicyCategory="NAAConfig".*?<!\[CDATA\[http://<mp>/SMS_MP/\.sms_pol\?', body)  # sccmwtf
    naa = next(pa.find("Policy") for pa in pas if pa.find("Policy").get("PolicyCategory") == "NAAConfig")  # type: ignore[union-attr]
    assert int(naa.get("PolicyFlags")) & 4  # type: ignore[union-attr,arg-type]
    rows = {c["sms_id"]: c for c in lab_rows(mp, "clients")}
    assert rows[device.sms_id]["last_policy_request"]
    wait_log(mp, "MP_Policy.log", rf"Replied \d+ policy assignment\(s\) \(1 secret\) to {device.sms_id}")


def _naa_path(mp: Lab, device: Device) -> str:
    m = re.search(r'PolicyCategory="NAAConfig".*?<!\[CDATA\[http://<mp>([^]]+)', assignments(mp, device))
    assert m
    return m.group(1)


def test_non_secret_policy_body(mp: Lab, device: Device) -> None:
    body = assignments(mp, device)
    path = re.search(r'PolicyCategory="ClientAgentConfig".*?<!\[CDATA\[http://<mp>([^]]+)', body).group(1)  # type: ignore[union-attr]
    with client(mp) as c:
        resp = c.get(http_url(mp) + path)
    assert resp.status_code == 200
    text = resp.content.decode("utf-16").rstrip("\x00")
    assert cm.parse_xml(text).find(".//instance").get("class") == "CCM_ClientAgentConfig"  # type: ignore[union-attr]


def test_secret_policy_needs_the_registered_key(mp: Lab, device: Device) -> None:
    path = _naa_path(mp, device)
    with client(mp) as c:
        anonymous = c.get(http_url(mp) + path)
        assert anonymous.text.startswith("<HTML>")
        other = Device("POL02")
        other.sms_id = device.sms_id  # claims the identity, signs with another key
        forged = c.get(http_url(mp) + path, headers=other.client_token_headers())
        assert forged.text.startswith("<HTML>")
    wait_log(mp, "ClientAuth.log", rf"Policy request from {device.sms_id}: ClientTokenSignature does not verify")


@pytest.mark.parametrize("digest_info", [True, False])
def test_secret_policy_is_cms_to_the_encryption_certificate(mp: Lab, device: Device, digest_info: bool) -> None:
    path = _naa_path(mp, device)
    token = f"{device.sms_id};{cm.utc_timestamp()};2"
    headers = {
        "ClientToken": token,
        "ClientTokenSignature": cm.sign_hex(device.key, cm.utf16(token) + b"\x00\x00", digest_info=digest_info),
    }
    with client(mp) as c:
        resp = c.get(http_url(mp) + path, headers=headers)
    assert resp.status_code == 200 and resp.content[:1] == b"\x30"
    plain = cms_decrypt(resp.content, device.key)
    xml = plain.decode("utf-16-le").rstrip("\x00")
    root = cm.parse_xml(xml)
    props = {p.get("name"): p.findtext("value") for p in root.iter("property")}
    naa = mp.config.site.network_access_account
    user_blob = props["NetworkAccessUsername"] or ""
    assert user_blob.startswith("8913") and user_blob[112:116] == "0366"
    assert deobfuscate_secret(user_blob) == naa.username
    assert deobfuscate_secret(props["NetworkAccessPassword"] or "") == naa.password
    wait_log(mp, "MP_Policy.log", rf"Served secret policy .* \(NAAConfig\) to {device.sms_id}")
    # ClientAuth.log (seeds 003/004 send admins there) records successes too, not only refusals
    wait_log(mp, "ClientAuth.log", rf"Policy request from {device.sms_id}: ClientToken signature verified")
    wait_log(mp, "ClientAuth.log", rf"to MP_PolicyManager: signed by {device.sms_id}, PayloadSignature verified")
    wait_log(mp, "ClientAuth.log", r"Registration request \{[0-9A-F-]{36}\}: signature verified")


def test_ccmclientid_headers(mp: Lab, device: Device) -> None:
    path = _naa_path(mp, device)
    stamp = cm.utc_timestamp()
    assert device.sms_id
    headers = {
        "CCMClientID": device.sms_id,
        "CCMClientIDSignature": cm.sign_hex(device.key, cm.utf16(device.sms_id) + b"\x00\x00", digest_info=False),
        "CCMClientTimestamp": stamp,
        "CCMClientTimestampSignature": cm.sign_hex(device.key, cm.utf16(stamp) + b"\x00\x00", digest_info=False),
    }
    with client(mp) as c:
        resp = c.get(http_url(mp) + path, headers=headers)
    assert resp.status_code == 200 and resp.content[:1] == b"\x30"


def test_unsigned_or_unknown_policy_requests_get_an_empty_reply(mp: Lab, device: Device) -> None:
    stranger = Device("POL03")
    stranger.sms_id = "GUID:00000000-1111-2222-3333-444444444444"
    impostor = Device("POL04")
    impostor.sms_id = device.sms_id
    unsigned = cm.encode_request(device.header("MP_PolicyManager", source_id=device.sms_id), device.assignments_body())
    with client(mp) as c:
        for raw in (
            stranger.signed_message("MP_PolicyManager", stranger.assignments_body()),
            impostor.signed_message("MP_PolicyManager", impostor.assignments_body()),
            unsigned,
        ):
            resp = ccm_post(c, f"{http_url(mp)}/ccm_system/request", raw)
            assert resp.status_code == 200 and resp.headers["content-length"] == "0" and resp.content == b""
    wait_log(mp, "ClientAuth.log", r"from unknown client 'GUID:00000000-1111-2222-3333-444444444444': not registered")
    wait_log(mp, "ClientAuth.log", rf"PayloadSignature of {device.sms_id} does not verify")


def test_sms_aut(mp: Lab) -> None:
    with client(mp) as c:
        mplist = cm.parse_xml(c.get(f"{http_url(mp)}/SMS_MP/.sms_aut?MPLIST").text)
        assert mplist.find("MP").get("FQDN") == mp.config.hosts.management_point  # type: ignore[union-attr]
        assert mplist.findtext("MP/Version") == str(mp.config.site.mp_build)
        keyinfo = cm.parse_xml(c.get(f"{http_url(mp)}/SMS_MP/.sms_aut?MPKEYINFORMATIONMEDIA").text)
        assert keyinfo.findtext("SITECODE") == mp.config.site.code
        assert keyinfo.find("UnknownMachines").get("x64UnknownMachineGUID")  # type: ignore[union-attr]
        assert (
            cm.parse_xml(c.get(f"{http_url(mp)}/SMS_MP/.sms_aut?MPKEYINFORMATION").text).find("UnknownMachines") is None
        )
        sign = cm.parse_xml(c.get(f"{https_url(mp)}/SMS_MP/.sms_aut?SITESIGNCERT").text)
        from cryptography import x509

        cert = x509.load_der_x509_certificate(bytes.fromhex(sign.text or ""))
        assert cert == mp.pki.site_signing.cert()
        mpcert = cm.parse_xml(c.get(f"{https_url(mp)}/SMS_MP/.sms_aut?MPCERT").text)
        assert (
            x509.load_der_x509_certificate(bytes.fromhex(mpcert.findtext("Certificate") or ""))
            == mp.pki.server("management-point").cert()
        )
        assert c.get(f"{http_url(mp)}/SMS_MP/.sms_aut?NOSUCHTHING").status_code == 404


def test_ddr_is_stored(mp: Lab, device: Device) -> None:
    report = (
        f"<Report><ReportHeader><Identification><Machine><ClientInstalled>1</ClientInstalled><ClientType>1"
        f"</ClientType><ClientID>{device.sms_id}</ClientID><ClientVersion>5.00.8968.1000</ClientVersion>"
        f"<NetBIOSName>{device.name}</NetBIOSName><CodePage>437</CodePage><SystemDefaultLCID>1033"
        f"</SystemDefaultLCID><Priority /></Machine></Identification><ReportDetails><ReportContent>"
        f"Inventory Data</ReportContent><ReportType>Full</ReportType><Date>20240101000000.000000+000</Date>"
        f'<Version>1.0</Version><Format>1.1</Format></ReportDetails><InventoryAction ActionType="Predefined">'
        f"<InventoryActionID>{{00000000-0000-0000-0000-000000000003}}</InventoryActionID><Description>"
        f"Discovery</Description></InventoryAction></ReportHeader><ReportBody /></Report>"
    )
    raw = device.signed_message("MP_DdrEndpoint", report, reply_mode="Async")
    with client(mp) as c:
        resp = ccm_post(c, f"{http_url(mp)}/ccm_system/request", raw)
    assert resp.status_code == 200
    ddrs = [d for d in lab_rows(mp, "ddrs") if d["sms_id"] == device.sms_id]
    assert ddrs and ddrs[-1]["signed"] is True and ddrs[-1]["netbios_name"] == device.name
    wait_log(mp, "MP_DDR.log", rf"Received DDR \d+ from {device.sms_id}")


def _client_settings(mp: Lab, device: Device) -> tuple[str, str, str]:
    """(PolicyVersion, PolicyHash, the body served at its URL) of the client settings policy as assigned now."""
    root = cm.parse_xml(assignments(mp, device))
    policy = next(
        p
        for p in root.iter("Policy")
        if p.get("PolicyCategory") == "ClientSettings"  # the one policy a site setting changes
    )
    location = policy.find("PolicyLocation")
    assert location is not None and location.text
    with client(mp) as c:
        served = c.get(http_url(mp) + location.text.removeprefix("http://<mp>"))
    assert served.status_code == 200 and served.content[:2] == b"\xff\xfe" and served.content[-2:] == b"\x00\x00"
    # the PolicyHash is the served body's (UTF-16LE, without the BOM and the terminator)
    assert location.get("PolicyHash") == "SHA256:" + hashlib.sha256(served.content[2:-2]).hexdigest().upper()
    return policy.get("PolicyVersion") or "", location.get("PolicyHash") or "", served.content.decode("utf-16")


def test_assignments_follow_a_policy_change_on_the_running_site(mp: Lab, device: Device) -> None:
    """The assignments are built once per state of the site's policies, never served stale: a change of
    `client_allow_cmg` on the running site (a new version of the client settings policy) is in the very next
    reply, whether the MP made it (`POST /_lab/site`) or another process wrote the site database
    (`cmglab site set`), and so is the change back."""
    version, digest, body = _client_settings(mp, device)
    allowed = 'name="AllowCMG" type="11"><value>1</value>' in body
    set_site(mp, client_allow_cmg=not allowed)
    try:
        changed, changed_digest, changed_body = _client_settings(mp, device)
        assert float(changed) > float(version) and changed_digest != digest
        assert f'name="AllowCMG" type="11"><value>{int(not allowed)}</value>' in changed_body
        set_site_in_lab_json(mp, client_allow_cmg=allowed)  # another process, straight into the site database
        back, back_digest, back_body = _client_settings(mp, device)
        assert float(back) > float(changed) and back_digest not in (digest, changed_digest)
        assert f'name="AllowCMG" type="11"><value>{int(allowed)}</value>' in back_body
    finally:
        set_site(mp, client_allow_cmg=allowed)
        set_site_in_lab_json(mp, client_allow_cmg=mp.config.site.client_allow_cmg)


def test_assignments_carry_hostile_values_escaped(mp: Lab) -> None:
    """What a client said of itself at registration (its NetBIOS and FQ names) and the ResourceType it asks for
    come back in ReplyAssignments as the same text, escaped: markup and quotes in them add no element and no
    attribute."""
    netbios, fqdn = "EV\"IL<&>'", 'a]]>b&amp;c<d>"e\' f="1'
    resource_type = 'Machine" Injected="1'
    device = Device("HOSTILE")
    data = (
        device.registration_data()
        .replace(
            f'<Property Name="Netbios Name" Value="{device.name}" />',
            f'<Property Name="Netbios Name" Value={quoteattr(netbios)} />',
        )
        .replace(
            f'<Property Name="FQ Name" Value="{device.fqdn}" />', f'<Property Name="FQ Name" Value={quoteattr(fqdn)} />'
        )
    )
    with client(mp) as c:
        resp = ccm_post(
            c,
            f"{http_url(mp)}/ccm_system/request",
            cm.encode_request(device.header("MP_ClientRegistration"), cm.registration_request(data, device.key)),
        )
        device.sms_id = cm.parse_xml(reply_body(resp)).get("SMSID")
        assert device.sms_id
        body = device.assignments_body().replace('ResourceType="Machine"', f"ResourceType={quoteattr(resource_type)}")
        reply = reply_body(
            ccm_post(c, f"{http_url(mp)}/ccm_system/request", device.signed_message("MP_PolicyManager", body))
        )
    root = cm.parse_xml(reply)
    assert root.findtext("Identification/Machine/NetBIOSName") == netbios
    assert root.findtext("Identification/Machine/FQDN") == fqdn
    resource = root.find("Resource")
    assert resource is not None and resource.attrib == {"ResourceType": resource_type}
    assert [child.tag for child in root.find("Identification/Machine")] == ["ClientID", "NetBIOSName", "FQDN", "SID"]  # type: ignore[union-attr]
