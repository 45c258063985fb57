"""MP_ClientRegistration over real sockets: self-signed (HTTP), approval by site settings,
Confirmation, PKI (TLS and the connection point's Client-Cert header), the client unique token."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from cmglab.wire.site_tokens import CLIENT, verify
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


@pytest.fixture
def approve_all(mp: Lab) -> Iterator[None]:
    set_site(mp, auto_approve="all")
    yield
    set_site(mp, auto_approve=mp.config.site.auto_approve)


def test_self_signed_registration_over_http_auto_approved(mp: Lab, approve_all: None) -> None:
    device = Device("REG01")
    attrs = register(mp, device)
    assert attrs["ResponseType"] == "Registration"
    assert attrs["Status"] == "0"
    assert attrs["SMSID"].startswith("GUID:") and attrs["SMSID"] == attrs["SMSID"].upper()
    assert attrs["ApprovalStatus"] == "1"
    # internal-network registration hands out the unique client token (seeds 003/004)
    claims = verify(
        attrs["PreAuthToken"],
        cert=mp.pki.site_signing.cert(),
        hierarchy_id=mp.config.site.hierarchy_id,
        types=(CLIENT,),
    )
    assert claims["DeviceId"] == attrs["SMSID"]
    from cmglab.runtime.certinfo import thumbprint

    assert claims["CertThumbprint"] == thumbprint(device.cert)
    rows = {c["sms_id"]: c for c in lab_rows(mp, "clients")}
    row = rows[attrs["SMSID"]]
    assert row["auth_kind"] == "self-signed" and row["approval"] == 1 and row["netbios_name"] == "REG01"
    tokens = [t for t in lab_rows(mp, "tokens") if t["sms_id"] == attrs["SMSID"]]
    assert [t["kind"] for t in tokens] == ["client"]
    assert "token" not in tokens[0]  # the site records the token's ID, never the token
    wait_log(mp, "MP_RegistrationManager.log", rf"Processing Registration request from Client '{attrs['SMSID']}'")


def test_default_site_does_not_approve_anonymous_self_signed(mp: Lab) -> None:
    device = Device("PEND01")
    attrs = register(mp, device)  # default auto_approve = domain
    assert attrs["Status"] == "0" and attrs["ApprovalStatus"] == "0"
    assert "PreAuthToken" not in attrs
    # an unapproved client gets no secret policy assignment
    with client(mp) as c:
        body = reply_body(
            ccm_post(
                c,
                f"{http_url(mp)}/ccm_system/request",
                device.signed_message("MP_PolicyManager", device.assignments_body()),
            )
        )
    assert "NAAConfig" not in body and "ClientAgentConfig" in body
    # the admin approves it (console: Approve); Confirmation then reports the approval
    with client(mp) as c:
        r = c.post(
            f"{https_url(mp)}/_lab/clients/{device.sms_id}/approve",
            headers={"Authorization": f"Bearer {mp.admin_token()}"},
        )
        assert r.status_code == 200
        conf = cm.parse_xml(
            reply_body(ccm_post(c, f"{http_url(mp)}/ccm_system/request", device.confirmation_message()))
        )
    assert conf.get("ResponseType") == "Confirmation" and conf.get("Status") == "0"
    assert conf.get("SMSID") == device.sms_id and conf.get("ApprovalStatus") == "1"


def test_client_proposed_smsid_is_kept(mp: Lab, approve_all: None) -> None:
    device = Device("PROP01")
    proposed = "GUID:C66EE0FD-08E7-4B38-B282-" + device.cert.serial_number.to_bytes(20, "big").hex()[:12].upper()
    with client(mp) as c:
        resp = ccm_post(c, f"{http_url(mp)}/ccm_system/request", device.registration_message(sms_id=proposed))
    root = cm.parse_xml(reply_body(resp))
    assert root.get("SMSID") == proposed
    # an anonymous request with another key cannot take that identity over
    intruder = Device("EVIL01")
    with client(mp) as c:
        resp = ccm_post(c, f"{http_url(mp)}/ccm_system/request", intruder.registration_message(sms_id=proposed))
    assert cm.parse_xml(reply_body(resp)).get("SMSID") != proposed


def test_one_registration_sent_many_times_at_once(mp: Lab, approve_all: None) -> None:
    """A client's retry racing its first attempt: every copy is answered with the same SMSID, none with a
    500, and the site has one row."""
    device = Device("RACE01")
    proposed = "GUID:" + str(uuid.uuid4()).upper()
    message = device.registration_message(sms_id=proposed)

    def send(_: int) -> tuple[int, str | None]:
        with client(mp) as c:
            resp = ccm_post(c, f"{http_url(mp)}/ccm_system/request", message)
            return resp.status_code, cm.parse_xml(reply_body(resp)).get("SMSID") if resp.status_code == 200 else None

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(32)))
    assert answers == [(200, proposed)] * 32
    assert [c["sms_id"] for c in lab_rows(mp, "clients")].count(proposed) == 1


def test_reply_envelope_bytes(mp: Lab, approve_all: None) -> None:
    device = Device("ENV01")
    with client(mp) as c:
        resp = ccm_post(c, f"{http_url(mp)}/ccm_system/request", device.registration_message())
    assert resp.headers["content-type"] == f'multipart/mixed; boundary="{cm.BOUNDARY}"'
    raw = resp.content
    head = f"--{cm.BOUNDARY}\r\ncontent-type: text/plain; charset=UTF-16\r\n\r\n\xff\xfe"
    assert raw.startswith(head.encode("latin-1"))
    assert raw.endswith(f"--{cm.BOUNDARY}--".encode())
    # the body part: zlib(UTF-16LE + NUL), what SCCMSecrets parses with text[:-1]
    body_part = raw.split(f"--{cm.BOUNDARY}".encode())[2].split(b"\r\n\r\n", 1)[1][:-2]
    import zlib

    text = zlib.decompress(body_part).decode("utf-16")
    assert text.endswith("/>\x00") and text.count("\x00") == 1
    assert cm.parse_xml(text[:-1]).attrib["SMSID"].split("GUID:")[1]


def test_reply_uncompressed_when_asked(mp: Lab, approve_all: None) -> None:
    device = Device("NOZ01")
    header = device.header("MP_ClientRegistration", reply_compression="none")
    raw = cm.encode_request(header, cm.registration_request(device.registration_data(), device.key))
    with client(mp) as c:
        resp = ccm_post(c, f"{http_url(mp)}/ccm_system/request", raw)
    part = resp.content.split(f"--{cm.BOUNDARY}".encode())[2].split(b"\r\n\r\n", 1)[1][:-2]
    assert part.decode("utf-16-le").startswith("<ClientRegistrationResponse ")
    assert part.endswith(b"\x00\x00")


def test_https_ccm_system_requires_a_client_certificate(mp: Lab) -> None:
    device = Device("TLS01")
    with client(mp) as c:
        resp = ccm_post(c, f"{https_url(mp)}/ccm_system/request", device.registration_message())
    assert resp.status_code == 403 and "Client certificate required" in resp.text
    wait_log(mp, "CcmIsapi.log", r"over HTTPS without a client certificate: 403\.7")


def test_pki_client_registers_with_its_tls_certificate(mp: Lab) -> None:
    ident = mp.pki.issue_client("pki-reg01")
    device = Device("PKI01")
    with client(mp, cert=(ident.cert_path, ident.key_path)) as c:
        attrs = register(mp, device, c, f"{https_url(mp)}/ccm_system/request")
    assert attrs["Status"] == "0" and attrs["ApprovalStatus"] == "1" and "PreAuthToken" not in attrs
    row = next(r for r in lab_rows(mp, "clients") if r["sms_id"] == device.sms_id)
    from cmglab.runtime.certinfo import thumbprint

    assert row["auth_kind"] == "pki" and row["pki_thumbprint"] == thumbprint(ident.cert())
    wait_log(mp, "MP_RegistrationManager.log", r"Registering device using PKI certificate")


def test_pki_client_through_the_connection_point_header(mp: Lab) -> None:
    ident = mp.pki.issue_client("pki-reg02")
    cp = mp.pki.connection_point
    device = Device("PKI02")
    header = ":" + base64.b64encode(ident.cert().public_bytes(Encoding.DER)).decode() + ":"
    with client(mp, cert=(cp.cert_path, cp.key_path)) as c:
        attrs = register(mp, device, c, f"{https_url(mp)}/ccm_system/request", headers={"Client-Cert": header})
        assert attrs["ApprovalStatus"] == "1"
        # without the header the connection point's own certificate is not a client's
        resp = ccm_post(c, f"{https_url(mp)}/ccm_system/request", Device("PKI03").registration_message())
        assert resp.status_code == 403
    row = next(r for r in lab_rows(mp, "clients") if r["sms_id"] == device.sms_id)
    assert row["auth_kind"] == "pki" and row["internet"] is True
    # a client cannot forge the header: without the connection point's TLS certificate it is ignored
    with client(mp) as c:
        resp = ccm_post(
            c,
            f"{https_url(mp)}/ccm_system/request",
            Device("PKI04").registration_message(),
            headers={"Client-Cert": header},
        )
    assert resp.status_code == 403


def test_altauth_accepts_https_without_a_certificate(mp: Lab, approve_all: None) -> None:
    device = Device("ALT01")
    with client(mp) as c:
        attrs = register(mp, device, c, f"{https_url(mp)}/ccm_system_altauth/request")
        assert attrs["Status"] == "0"
        # probes answered as a real MP does (sccmhunter's role detection)
        assert c.get(f"{https_url(mp)}/ccm_system_altauth/").status_code == 403
        assert c.request("CCM_POST", f"{https_url(mp)}/ccm_system_altauth/request").status_code == 200


def test_paths_are_case_insensitive(mp: Lab, approve_all: None) -> None:
    device = Device("CASE01")
    attrs = register(mp, device, url=f"{http_url(mp)}/CCM_System/Request")
    assert attrs["Status"] == "0"
    with client(mp) as c:
        assert c.get(f"{http_url(mp)}/sms_mp/.SMS_AUT?MPLIST").status_code == 200
