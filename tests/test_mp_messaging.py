"""The shared CcmMessaging codec: byte layout as docs/protocol-notes.md, ConfigMgr §2 shows, round trips,
signatures (DigestInfo and CRYPT_NOHASHOID), PUBLICKEYBLOB, ClientToken; parse errors are typed."""

from __future__ import annotations

import zlib
from xml.etree.ElementTree import Element

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from defusedxml import ElementTree as DefusedET

from cmglab.wire import ccm_messaging as cm

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_request_bytes_match_the_research_layout() -> None:
    h = cm.MsgHeader(
        target_endpoint="MP_ClientRegistration",
        id="{5DD100CD-DF1D-45F5-BA17-A327F43465F8}",
        sent_time="2024-01-01T12:00:00Z",
        source_host="LAB01",
        target_host="mp.lab.local",
        reply_to="direct:LAB01:SccmMessaging",
    )
    raw = cm.encode_request(h, "<ClientRegistrationRequest/>")
    prefix = f"--{cm.BOUNDARY}\r\ncontent-type: text/plain; charset=UTF-16\r\n\r\n".encode() + b"\xff\xfe"
    assert raw.startswith(prefix)
    header_end = raw.index(f"\r\n--{cm.BOUNDARY}\r\ncontent-type: application/octet-stream\r\n\r\n".encode())
    header_xml = raw[len(prefix) : header_end].decode("utf-16-le")
    assert header_xml == (
        '<Msg ReplyCompression="zlib" SchemaVersion="1.1"><Body Type="ByteRange" Length="58" Offset="0" />'
        '<CorrelationID>{00000000-0000-0000-0000-000000000000}</CorrelationID><Hooks><Hook3 Name="zlib-compress" />'
        '</Hooks><ID>{5DD100CD-DF1D-45F5-BA17-A327F43465F8}</ID><Payload Type="inline" /><Priority>0</Priority>'
        "<Protocol>http</Protocol><ReplyMode>Sync</ReplyMode><ReplyTo>direct:LAB01:SccmMessaging</ReplyTo>"
        "<SentTime>2024-01-01T12:00:00Z</SentTime><SourceHost>LAB01</SourceHost><TargetAddress>mp:MP_ClientRegistration"
        "</TargetAddress><TargetEndpoint>MP_ClientRegistration</TargetEndpoint><TargetHost>mp.lab.local</TargetHost>"
        "<Timeout>60000</Timeout></Msg>"
    )
    assert raw.endswith(f"\r\n--{cm.BOUNDARY}--".encode())
    body = raw.split(b"application/octet-stream\r\n\r\n")[1][: -len(f"\r\n--{cm.BOUNDARY}--")]
    assert body[:2] == b"\x78\x9c"
    plain = zlib.decompress(body)
    # UTF-16LE body + NUL + CRLF; Length counts the NUL, not the CRLF
    assert plain == "<ClientRegistrationRequest/>".encode("utf-16-le") + b"\x00\x00\r\n"
    assert len(plain) - 2 == 58


def test_round_trip_with_signature_and_blob() -> None:
    h = cm.MsgHeader(target_endpoint="MP_PolicyManager", source_id="GUID:ABC", source_host="LAB01")
    raw = cm.encode_request(h, "<RequestAssignments/>", signer=KEY)
    msg = cm.decode_message(raw, cm.CONTENT_TYPE)
    assert msg.body == "<RequestAssignments/>" and msg.header.source_id == "GUID:ABC"
    auth = msg.header.clientauth or {}
    assert list(auth) == [
        "AuthSenderMachine",
        "PublicKey",
        "ClientIDSignature",
        "PayloadSignature",
        "ClientCapabilities",
        "HashAlgorithm",
    ]
    assert cm.verify(KEY.public_key(), msg.payload, auth["PayloadSignature"])
    assert cm.verify(KEY.public_key(), cm.utf16("GUID:ABC") + b"\x00\x00", auth["ClientIDSignature"])
    blob = bytes.fromhex(auth["PublicKey"])
    assert blob[:20].hex().upper() == "0602000000A40000525341310008000001000100"
    assert cm.parse_public_key_blob(blob).public_numbers() == KEY.public_key().public_numbers()


def test_signatures_are_reversed_and_both_paddings_verify() -> None:
    data = b"payload"
    sig = cm.sign(KEY, data)
    KEY.public_key().verify(sig[::-1], data, padding.PKCS1v15(), hashes.SHA256())  # reversed CryptoAPI order
    bare = cm.sign(KEY, data, digest_info=False)
    assert bare != sig
    assert cm.verify(KEY.public_key(), data, bare) and cm.verify(KEY.public_key(), data, sig.hex().upper())
    assert not cm.verify(KEY.public_key(), b"other", sig)
    assert not cm.verify(KEY.public_key(), data, "zz-not-hex")
    assert not cm.verify(KEY.public_key(), data, sig[:-1])


def test_reply_round_trip_and_no_compression() -> None:
    req = cm.MsgHeader(
        target_endpoint="MP_LocationManager", source_host="LAB01", reply_to="direct:LAB01:LS_ReplyLocations"
    )
    reply = cm.encode_reply(req, '<SiteInfoReply SchemaVersion="1.00"/>', source_host="MP", boundary="bnd")
    header, body = cm.decode_reply(reply, 'multipart/mixed; boundary="bnd"')
    assert body == '<SiteInfoReply SchemaVersion="1.00"/>' and header.correlation_id == req.id
    req.reply_compression = "none"
    raw = cm.encode_reply(req, "<X/>", source_host="MP")
    part = raw.split(b"application/octet-stream\r\n\r\n")[1].split(b"\r\n--")[0]
    assert part == "<X/>".encode("utf-16-le") + b"\x00\x00"


def test_lenient_parsing_of_real_variants() -> None:
    # PXEThief: form-data multipart, a random boundary, uncompressed body, a wrong Length, no Hook3
    header = (
        '<Msg><Body Type="ByteRange" Length="728" Offset="0"/><ID>{1}</ID>'
        "<TargetAddress>mp:[http]MP_LocationManager</TargetAddress></Msg>"
    )
    raw = (
        b'--rnd\r\nContent-Disposition: form-data; name="Msg"\r\nContent-Type: text/plain; charset=UTF-16\r\n\r\n'
        + header.encode("utf-16")
        + b'\r\n--rnd\r\nContent-Disposition: form-data; name="R"\r\n\r\n'
        + "<SiteInformationRequest/>".encode("utf-16-le")
        + b"\x00\x00\x00\r\n--rnd--\r\n"
    )
    msg = cm.decode_message(raw, "multipart/mixed; boundary=rnd")
    assert msg.header.target_endpoint == "MP_LocationManager" and msg.body == "<SiteInformationRequest/>"
    assert cm.decode_message(raw).boundary == "rnd"  # boundary from the first line


@pytest.mark.parametrize(
    "raw,ctype",
    [
        (b"", cm.CONTENT_TYPE),
        (b"--x\r\n", "multipart/mixed; boundary=x"),
        (b"\x00" * 50, None),
        (b"--" + cm.BOUNDARY.encode() + b"\r\nnoseparator", cm.CONTENT_TYPE),
    ],
)
def test_parse_raises_only_its_own_error(raw: bytes, ctype: str | None) -> None:
    with pytest.raises(cm.CcmMessageError):
        cm.decode_message(raw, ctype)


def test_client_token_helpers() -> None:
    headers = cm.client_token_headers("GUID:0DB5A7A8-1D89-4B6A-8B0B-3C8BDB0C7C11", KEY)
    ident, _stamp = cm.parse_client_token(headers["ClientToken"])
    assert ident == "GUID:0DB5A7A8-1D89-4B6A-8B0B-3C8BDB0C7C11" and headers["ClientToken"].endswith(";2")
    assert cm.verify_any(
        KEY.public_key(), cm.client_token_candidates(headers["ClientToken"]), headers["ClientTokenSignature"]
    )
    assert cm.parse_client_token("{0db5a7a8-1d89-4b6a-8b0b-3c8bdb0c7c11};2024-01-01T00:00:00Z")[0] == ident
    with pytest.raises(cm.CcmMessageError):
        cm.parse_client_token("nonsense")


def _shape(el: Element) -> tuple[object, ...]:
    return (el.tag, el.attrib, el.text, el.tail, [_shape(child) for child in el])


PARSED_ALIKE = [
    '<?xml version="1.0" encoding="UTF-16"?><Msg SchemaVersion="1.1"><ID>{1}</ID></Msg>',
    '<a x="&#233;&quot;&apos;" y=\'"\'>&amp;&lt;&gt;&#x41;<b/>tail<![CDATA[<!-- ]]><!-- c --></a>',
    '<a xmlns:p="urn:p"><p:b p:c="1">\n text </p:b></a>',
    '<a><![CDATA[<!DOCTYPE x [<!ENTITY y "z">]>]]></a>',  # named in text only: the defusedxml path, parsed
]
REFUSED = [
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><a>&lol2;</a>',
    '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
    '<!DOCTYPE r SYSTEM "http://127.0.0.1:1/x.dtd"><r/>',
    "<a>&x;</a>",  # an entity never declared
    "<a>&#1;</a>",
    "<a",
    "",
]


@pytest.mark.parametrize("text", PARSED_ALIKE)
def test_parse_xml_reads_what_defusedxml_reads(text: str) -> None:
    """parse_xml takes the C parser for text without a DTD: the same tree as defusedxml's, text or bytes."""
    expected = _shape(DefusedET.fromstring(text, forbid_dtd=True))
    assert _shape(cm.parse_xml(text)) == expected
    assert _shape(cm.parse_xml(text.encode("utf-8") if "UTF-16" not in text else text.encode("utf-16"))) == expected


@pytest.mark.parametrize("text", REFUSED)
def test_parse_xml_refuses_dtds_and_entities_on_every_path(text: str) -> None:
    """A DTD (entity bombs, external entities, an external DTD) or an undeclared entity is refused as text and
    as bytes, with the codec's own error."""
    for doc in (text, text.encode("utf-8"), text.encode("utf-16")):
        with pytest.raises(cm.CcmMessageError):
            cm.parse_xml(doc)
