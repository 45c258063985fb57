"""Bad input on the CcmMessaging endpoint: each refused the MP's way, with a log line, and nothing
half-registered."""

from __future__ import annotations

import re
import zlib

import pytest

from cmglab.runtime.certinfo import thumbprint
from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from tests.support.lab import lab_fixture
from tests.support.mp import Device, ccm_post, client, http_url, lab_rows, new_key, register, reply_body, wait_log

mp = lab_fixture("management-point", site={"auto_approve": "all"})


def post(mp: Lab, raw: bytes, content_type: str = cm.CONTENT_TYPE):  # type: ignore[no-untyped-def]
    with client(mp) as c:
        return ccm_post(c, f"{http_url(mp)}/ccm_system/request", raw, content_type=content_type)


def names(mp: Lab) -> set[str]:
    return {r["netbios_name"] for r in lab_rows(mp, "clients")}


def header_part(device: Device, **kw: object) -> bytes:
    return b"\xff\xfe" + cm.utf16(device.header("MP_ClientRegistration", **kw).to_xml())  # type: ignore[arg-type]


def test_malformed_multipart(mp: Lab) -> None:
    resp = post(mp, b"this is not multipart at all")
    assert resp.status_code == 400
    wait_log(mp, "CcmIsapi.log", r"invalid message: boundary")
    resp = post(mp, b"garbage", content_type="text/plain")
    assert resp.status_code == 400
    wait_log(mp, "CcmIsapi.log", r"invalid message: not a multipart message")


def test_wrong_boundary(mp: Lab) -> None:
    raw = Device("ERR01").registration_message()
    resp = post(mp, raw, content_type='multipart/mixed; boundary="someOtherBoundary"')
    assert resp.status_code == 400
    wait_log(mp, "CcmIsapi.log", r"boundary 'someOtherBoundary' not found")
    assert "ERR01" not in names(mp)


def test_any_boundary_is_accepted(mp: Lab) -> None:
    device = Device("ERR02")
    body = cm.registration_request(device.registration_data(), device.key)
    raw = cm.encode_request(device.header("MP_ClientRegistration"), body, boundary="xYz123boundary")
    resp = post(mp, raw, content_type='multipart/mixed; boundary="xYz123boundary"')
    assert resp.headers["content-type"] == 'multipart/mixed; boundary="xYz123boundary"'
    assert cm.parse_xml(reply_body(resp)).get("Status") == "0"


def test_bad_zlib(mp: Lab) -> None:
    device = Device("ERR03")
    raw = cm.build_multipart(
        [(cm.HEADER_PART_TYPE, header_part(device)), (cm.BODY_PART_TYPE, b"\x78\x9c" + b"\x01not zlib at all")]
    )
    assert post(mp, raw).status_code == 400
    wait_log(mp, "CcmIsapi.log", r"invalid message: bad zlib data")


def test_zlib_bomb(mp: Lab) -> None:
    device = Device("ERR04")
    bomb = zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)
    raw = cm.build_multipart([(cm.HEADER_PART_TYPE, header_part(device)), (cm.BODY_PART_TYPE, bomb)])
    assert len(raw) < 200_000
    assert post(mp, raw).status_code == 400
    wait_log(mp, "CcmIsapi.log", r"decompressed body exceeds \d+ bytes")


def test_utf16_garbage(mp: Lab) -> None:
    device = Device("ERR05")
    raw = cm.build_multipart(
        [
            (cm.HEADER_PART_TYPE, b"\xff\xfe\x00\xd8\x41\x00garbage"),
            (cm.BODY_PART_TYPE, zlib.compress(b"\x00\xd8" * 10)),
        ]
    )
    assert post(mp, raw).status_code == 400
    wait_log(mp, "CcmIsapi.log", r"invalid message: (not UTF-16|header part is not UTF-16 XML)")
    body = zlib.compress("just words, no xml".encode("utf-16-le") + b"\x00\x00")
    raw = cm.build_multipart([(cm.HEADER_PART_TYPE, header_part(device)), (cm.BODY_PART_TYPE, body)])
    assert post(mp, raw).status_code == 400
    wait_log(mp, "CcmIsapi.log", r"body is not UTF-16 XML")


@pytest.mark.parametrize(
    "evil",
    [
        '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><ClientRegistrationRequest>'
        "&lol2;</ClientRegistrationRequest>",
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><ClientRegistrationRequest>&x;</ClientRegistrationRequest>',
    ],
)
def test_xml_bombs_and_external_entities(mp: Lab, evil: str) -> None:
    device = Device("ERR06")
    raw = cm.encode_request(device.header("MP_ClientRegistration"), evil)
    assert post(mp, raw).status_code == 400
    wait_log(mp, "CcmIsapi.log", r"invalid body: malformed XML: (DTD|Entit)")
    header_bomb = cm.build_multipart(
        [
            (cm.HEADER_PART_TYPE, b"\xff\xfe" + cm.utf16('<!DOCTYPE m [<!ENTITY a "aaaa">]><Msg>&a;</Msg>')),
            (cm.BODY_PART_TYPE, b""),
        ]
    )
    assert post(mp, header_bomb).status_code == 400
    assert "ERR06" not in names(mp)


def test_signature_that_does_not_verify(mp: Lab) -> None:
    device = Device("ERR07")
    data = device.registration_data()
    body = cm.registration_request(data, Device().key)  # signed with another key
    resp = post(mp, cm.encode_request(device.header("MP_ClientRegistration"), body))
    root = cm.parse_xml(reply_body(resp))
    assert root.get("Status") == "3" and root.get("SMSID") is None
    wait_log(mp, "MP_RegistrationManager.log", r"Registration request refused: the registration request's signature")
    wait_log(mp, "ClientAuth.log", r"Registration signature verification failed")
    tampered = cm.registration_request(data, device.key).replace('Value="ERR07"', 'Value="ERR07X"')
    resp = post(mp, cm.encode_request(device.header("MP_ClientRegistration"), tampered))
    assert cm.parse_xml(reply_body(resp)).get("Status") == "3"
    assert not {"ERR07", "ERR07X"} & names(mp)
    assert not [t for t in lab_rows(mp, "tokens") if t["sms_id"] is None and t["kind"] == "client"]


def test_unknown_smsid(mp: Lab) -> None:
    device = Device("ERR08")
    device.sms_id = "GUID:12345678-1234-1234-1234-123456789ABC"
    resp = post(mp, device.confirmation_message())
    root = cm.parse_xml(reply_body(resp))
    assert root.get("ResponseType") == "Confirmation" and root.get("Status") == "2"  # reset: register again
    wait_log(mp, "MP_RegistrationManager.log", r"Confirmation request from unknown Client 'GUID:12345678-1234")
    resp = post(mp, device.signed_message("MP_PolicyManager", device.assignments_body()))
    assert resp.status_code == 200 and resp.content == b""


REFUSAL = r'<ClientRegistrationResponse ResponseType="{kind}" TimeStamp="[^"]+" Status="{status}"/>'


def record(message: str) -> str:
    """An SMS-trace record whose message is `message` to the letter."""
    return r"(?:^|\n)" + re.escape(message) + r"  \$\$<"


def refused_line(reason: str) -> str:
    return record(f"Registration request refused: {reason}")


def test_refusals_say_why_in_the_logs_and_answer_the_mps_way(mp: Lab) -> None:
    """The refusals that first say why in a product log, to the letter: a registration signed with another key,
    a confirmation from an unknown client (reset: register again), a confirmation signed with a key other than
    the registered one; each answered a bare ClientRegistrationResponse (no SMSID, no ApprovalStatus)."""
    device = Device("ERR10")
    data = device.registration_data()
    resp = post(mp, cm.encode_request(device.header("MP_ClientRegistration"), cm.registration_request(data, new_key())))
    assert re.fullmatch(REFUSAL.format(kind="Registration", status=3), reply_body(resp)), reply_body(resp)
    exact = f"Registration signature verification failed for the signing certificate {thumbprint(device.cert)}"
    wait_log(mp, "ClientAuth.log", record(exact))
    reason = "the registration request's signature does not verify with its signing certificate"
    wait_log(mp, "MP_RegistrationManager.log", refused_line(reason))

    stranger = Device("ERR11")
    stranger.sms_id = "GUID:0A0B0C0D-1234-1234-1234-123456789ABC"
    resp = post(mp, stranger.confirmation_message())
    assert re.fullmatch(REFUSAL.format(kind="Confirmation", status=2), reply_body(resp)), reply_body(resp)
    exact = f"Confirmation request from unknown Client '{stranger.sms_id}': asking it to register again"
    wait_log(mp, "MP_RegistrationManager.log", record(exact))
    wait_log(mp, "MP_RegistrationManager.log", refused_line(f"unknown client {stranger.sms_id}"))

    assert register(mp, device)["Status"] == "0"
    impostor = Device("ERR10")  # another key, the registered client's SMSID
    impostor.sms_id = device.sms_id
    resp = post(mp, impostor.confirmation_message())
    assert re.fullmatch(REFUSAL.format(kind="Confirmation", status=3), reply_body(resp)), reply_body(resp)
    exact = f"Confirmation signature from {device.sms_id} does not verify with its registered key"
    wait_log(mp, "ClientAuth.log", record(exact))
    wait_log(mp, "MP_RegistrationManager.log", refused_line(f"signature of {device.sms_id} does not verify"))


def test_unknown_endpoint_and_missing_parts(mp: Lab) -> None:
    device = Device("ERR09")
    resp = post(mp, cm.encode_request(device.header("MP_NoSuchEndpoint"), "<X/>"))
    assert resp.status_code == 404
    wait_log(mp, "CcmIsapi.log", r"no endpoint 'MP_NoSuchEndpoint'")
    only_header = cm.build_multipart([(cm.HEADER_PART_TYPE, header_part(device))])
    assert post(mp, only_header).status_code == 400
    wait_log(mp, "CcmIsapi.log", r"expected a header part and a body part")


def test_body_size_cap(mp: Lab) -> None:
    huge = b"x" * (mp.settings.max_body_bytes + 1)
    assert post(mp, huge).status_code == 413


def test_empty_ccm_post_is_200(mp: Lab) -> None:
    with client(mp) as c:
        resp = c.request("CCM_POST", f"{http_url(mp)}/ccm_system/request")
    assert resp.status_code == 200 and resp.content == b""
