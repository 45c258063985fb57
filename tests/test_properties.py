"""Property tests of every parser and builder the services share: what a builder makes its parser
reads back, and a parser fed anything raises nothing but its module's own error. Example counts are
kept modest (CI time); hypothesis's database is off so a run does not depend on an earlier one."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import struct
import uuid
import zlib
from datetime import UTC, datetime
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmglab.core.logs import close_file_loggers, format_cmtrace, format_smstrace, smstrace_logger
from cmglab.pki import builders as b
from cmglab.services.entra.drs import check_csr, parse_transport_key
from cmglab.services.entra.errors import DRSError
from cmglab.wire import ccm_messaging as cm
from cmglab.wire import cmg_channel as ch
from cmglab.wire import site_tokens
from cmglab.wire.entra_tokens import EntraKeys, EntraTokenError
from cmglab.wire.httpclient import parse_resolve

FEW = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
NO_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # Unicode surrogates: not text
KEY = b.new_key()  # one RSA key for the module: generating keys per example would dominate the run

# text an XML document can carry (XML 1.0 Char, no surrogates) and that the UTF-16 framing keeps
xml_text = st.text(
    st.characters(blacklist_categories=NO_SURROGATES, blacklist_characters="\x00", min_codepoint=0x20), max_size=60
)
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,20}", fullmatch=True)
boundaries = st.from_regex(r"[A-Za-z0-9]{1,40}", fullmatch=True)


# -- CcmMessaging: multipart ----------------------------------------------------------------------
@SOME
@given(boundary=boundaries, parts=st.lists(st.tuples(names, st.binary(max_size=200)), min_size=1, max_size=4))
def test_multipart_round_trip(boundary: str, parts: list[tuple[str, bytes]]) -> None:
    delim = b"--" + boundary.encode()
    parts = [(ctype, data) for ctype, data in parts if delim not in data]
    if not parts:
        return
    raw = cm.build_multipart(parts, boundary)
    got_boundary, got = cm.split_multipart(raw, f'multipart/mixed; boundary="{boundary}"')
    assert got_boundary == boundary
    assert [(p.content_type, p.data) for p in got] == parts
    assert cm.split_multipart(raw)[1] == got  # the boundary read from the first line


@SOME
@given(body=st.binary(max_size=400), content_type=st.one_of(st.none(), st.text(max_size=60)))
def test_multipart_and_message_parsers_raise_only_their_error(body: bytes, content_type: str | None) -> None:
    for parse in (cm.split_multipart, cm.decode_message):
        with contextlib.suppress(cm.CcmMessageError):
            parse(body, content_type)


@FEW
@given(
    cut=st.integers(min_value=0, max_value=2000),
    flip=st.integers(min_value=0, max_value=2000),
    value=st.integers(min_value=0, max_value=255),
)
def test_damaged_messages_raise_only_the_codec_error(cut: int, flip: int, value: int) -> None:
    raw = bytearray(cm.encode_request(cm.MsgHeader(target_endpoint="MP_LocationManager"), "<R a='1'/>"))
    raw[flip % len(raw)] = value
    with contextlib.suppress(cm.CcmMessageError):
        cm.decode_message(bytes(raw[: len(raw) - cut % len(raw)]), cm.CONTENT_TYPE)


# -- CcmMessaging: UTF-16 + NUL framing, zlib -----------------------------------------------------
@SOME
@given(text=xml_text, endpoint=names, host=names, compress=st.booleans())
def test_message_round_trip(text: str, endpoint: str, host: str, compress: bool) -> None:
    from xml.sax.saxutils import quoteattr

    body = f"<Body v={quoteattr(text)}/>"
    header = cm.MsgHeader(target_endpoint=endpoint, source_host=host, target_host="mp.corp.lab.test")
    msg = cm.decode_message(cm.encode_request(header, body, compress=compress), cm.CONTENT_TYPE)
    assert msg.body == body
    assert cm.parse_xml(msg.body).get("v") == text
    assert (msg.header.target_endpoint, msg.header.source_host, msg.header.zlib) == (endpoint, host, compress)
    assert msg.header.body_length == len(cm.utf16(body)) + 2  # UTF-16LE + the NUL terminator


@SOME
@given(
    text=st.text(st.characters(blacklist_categories=NO_SURROGATES, blacklist_characters="\x00"), max_size=80),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_utf16_nul_framing_round_trip(text: str, bom: bool, crlf: bool) -> None:
    """A body is UTF-16LE + NUL (+ the bytes CR LF in a request): the text is what precedes the NUL, less the
    line breaks a decoder trims at its end (with nothing after the NUL, decode_utf16 trims them too)."""
    payload, length = cm.body_payload(text, compress=False, crlf=crlf)
    assert length == len(cm.utf16(text)) + 2
    decoded = cm.decode_utf16((b"\xff\xfe" if bom else b"") + payload).split("\x00", 1)[0]
    assert decoded.rstrip("\r\n") == text.rstrip("\r\n")


@SOME
@given(data=st.binary(max_size=300))
def test_utf16_decoder_raises_only_the_codec_error(data: bytes) -> None:
    with contextlib.suppress(cm.CcmMessageError):
        cm.decode_utf16(data)


@SOME
@given(data=st.binary(max_size=3000), limit=st.integers(min_value=0, max_value=4000))
def test_inflate_round_trip_and_cap(data: bytes, limit: int) -> None:
    packed = zlib.compress(data)
    if len(data) <= limit:
        assert cm.inflate(packed, limit) == data
    else:
        with pytest.raises(cm.CcmMessageError, match="exceeds"):
            cm.inflate(packed, limit)


@SOME
@given(data=st.binary(max_size=300))
def test_inflate_raises_only_the_codec_error(data: bytes) -> None:
    with contextlib.suppress(cm.CcmMessageError):
        cm.inflate(data, 10_000)


# -- CcmMessaging: reversed signatures, PUBLICKEYBLOB ---------------------------------------------
@FEW
@given(data=st.binary(max_size=200), digest_info=st.booleans(), other=st.binary(min_size=1, max_size=20))
def test_reversed_signature_sign_verify(data: bytes, digest_info: bool, other: bytes) -> None:
    sig = cm.sign_hex(KEY, data, digest_info=digest_info)
    assert sig == sig.upper() and cm.verify(KEY.public_key(), data, sig)
    assert cm.verify(KEY.public_key(), data, bytes.fromhex(sig))
    assert not cm.verify(KEY.public_key(), data + other, sig)
    assert not cm.verify(KEY.public_key(), data, bytes.fromhex(sig)[::-1])  # not reversed: refused


@SOME
@given(signature=st.one_of(st.text(max_size=600), st.binary(max_size=300)))
def test_verify_never_raises(signature: str | bytes) -> None:
    assert cm.verify(KEY.public_key(), b"data", signature) is False


def test_public_key_blob_round_trip() -> None:
    blob = cm.public_key_blob(KEY.public_key())
    assert blob[:2] == b"\x06\x02" and blob[8:12] == b"RSA1"
    assert cm.parse_public_key_blob(blob).public_numbers() == KEY.public_key().public_numbers()


@SOME
@given(
    blob=st.one_of(
        st.binary(max_size=300), st.binary(max_size=300).map(lambda t: bytes.fromhex("0602000000A40000") + b"RSA1" + t)
    )
)
def test_public_key_blob_parser_raises_only_the_codec_error(blob: bytes) -> None:
    with contextlib.suppress(cm.CcmMessageError):
        cm.parse_public_key_blob(blob)


# -- CcmMessaging: the <Msg> header and the ClientToken headers -----------------------------------
@SOME
@given(
    endpoint=names,
    source=names,
    target=names,
    reply_to=st.one_of(st.none(), names),
    compression=st.sampled_from([None, "zlib", "none"]),
    length=st.integers(0, 2**31),
    props=st.dictionaries(names, xml_text.map(str.strip), max_size=3),
)
def test_msg_header_round_trip(
    endpoint: str,
    source: str,
    target: str,
    reply_to: str | None,
    compression: str | None,
    length: int,
    props: dict[str, str],
) -> None:
    h = cm.MsgHeader(
        target_endpoint=endpoint,
        source_host=source,
        target_host=target,
        reply_to=reply_to,
        reply_compression=compression,
        body_length=length,
        clientauth=props,
    )
    back = cm.MsgHeader.from_xml(h.to_xml())
    assert (back.target_endpoint, back.source_host, back.target_host, back.reply_to) == (
        endpoint,
        source,
        target,
        reply_to,
    )
    assert (back.reply_compression, back.body_length, back.id, back.clientauth) == (compression, length, h.id, props)


@SOME
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.text(max_size=100).map(lambda t: f"<Msg>{t}</Msg>"),
        st.from_regex(
            r"<Msg><Body Length=\"[^\"]{0,8}\" ?/><TargetAddress>[^<]{0,20}"
            r"</TargetAddress></Msg>",
            fullmatch=True,
        ),
    )
)
def test_msg_header_parser_raises_only_the_codec_error(text: str) -> None:
    with contextlib.suppress(cm.CcmMessageError):
        cm.MsgHeader.from_xml(text)


@FEW
@given(
    ident=st.uuids(),
    when=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)),
)
def test_client_token_headers_round_trip(ident: uuid.UUID, when: datetime) -> None:
    sms_id = f"GUID:{str(ident).upper()}"
    headers = cm.client_token_headers(sms_id, KEY, when)
    parsed_id, stamp = cm.parse_client_token(headers["ClientToken"])
    assert parsed_id == sms_id and cm.parse_timestamp(stamp) == when.replace(microsecond=0)
    assert cm.verify_any(
        KEY.public_key(), cm.client_token_candidates(headers["ClientToken"]), headers["ClientTokenSignature"]
    )


@SOME
@given(token=st.text(max_size=120))
def test_client_token_and_timestamp_parsers_raise_only_the_codec_error(token: str) -> None:
    for parse in (cm.parse_client_token, cm.parse_timestamp):
        with contextlib.suppress(cm.CcmMessageError):
            parse(token)


@SOME
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_xml_parser_raises_only_the_codec_error(text: str | bytes) -> None:
    with contextlib.suppress(cm.CcmMessageError):
        cm.parse_xml(text)


# -- CMTrace and SMS trace ------------------------------------------------------------------------
SMSTRACE = re.compile(
    r"^(?P<text>.*)  \$\$<(?P<component>[^>]*)><(?P<date>\d\d-\d\d-\d{4}) "
    r"(?P<time>\d\d:\d\d:\d\d\.\d{3})(?P<bias>[+-]\d+)><thread=(?P<thread>\d+) "
    r"\(0x(?P<hex>[0-9A-F]+)\)>$",
    re.DOTALL,
)
CMTRACE = re.compile(
    r'^<!\[LOG\[(?P<text>.*)\]LOG\]!><time="(?P<time>\d\d:\d\d:\d\d\.\d{3})(?P<bias>[+-]\d+)" '
    r'date="(?P<date>\d\d-\d\d-\d{4})" component="(?P<component>[^"]*)" context="" '
    r'type="(?P<type>\d)" thread="(?P<thread>\d+)" file="(?P<file>[^"]*)">$',
    re.DOTALL,
)
log_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC))


@SOME
@given(
    message=st.text(st.characters(blacklist_categories=NO_SURROGATES), max_size=100),
    component=names,
    when=log_times,
    thread=st.integers(0, 2**32 - 1),
)
def test_smstrace_fields_survive_and_line_breaks_become_tildes(
    message: str, component: str, when: datetime, thread: int
) -> None:
    line = format_smstrace(message, component=component, when=when, thread=thread)
    assert "\r" not in line and "\n" not in line
    m = SMSTRACE.match(line)
    assert m is not None
    assert m["text"] == re.sub(r"\r\n|\n|\r", "~~", message)
    assert (m["component"], int(m["thread"]), int(m["hex"], 16)) == (component, thread, thread)
    assert (
        m["date"] == when.strftime("%m-%d-%Y")
        and m["time"] == when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    )


@SOME
@given(
    message=st.text(st.characters(blacklist_categories=NO_SURROGATES), max_size=100).filter(
        lambda t: "]LOG]!>" not in t
    ),
    component=names,
    when=log_times,
    type_=st.sampled_from([1, 2, 3]),
    thread=st.integers(0, 2**32 - 1),
    file=st.from_regex(r"[a-z_]{1,12}\.cpp:\d{1,5}", fullmatch=True),
)
def test_cmtrace_fields_survive(
    message: str, component: str, when: datetime, type_: int, thread: int, file: str
) -> None:
    m = CMTRACE.match(format_cmtrace(message, component=component, when=when, type_=type_, thread=thread, file=file))
    assert m is not None
    assert (m["text"], m["component"], int(m["type"]), int(m["thread"]), m["file"]) == (
        message,
        component,
        type_,
        thread,
        file,
    )


@FEW
@given(
    messages=st.lists(st.text(st.characters(blacklist_categories=NO_SURROGATES), max_size=40), min_size=1, max_size=5)
)
def test_one_crlf_record_per_message_in_the_file(tmp_path_factory: pytest.TempPathFactory, messages: list[str]) -> None:
    path = tmp_path_factory.mktemp("smslog") / "Test.log"
    log = smstrace_logger(path, "Test")
    try:
        for text in messages:
            log.info(text)
    finally:
        close_file_loggers(path.parent)
    records = path.read_bytes().decode("utf-8").split("\r\n")
    assert records[-1] == "" and len(records) == len(messages) + 1
    assert all("\r" not in r and "\n" not in r for r in records)


# -- the CMG channel frames -----------------------------------------------------------------------
@SOME
@given(kind=st.sampled_from(list(ch.Kind)), msg_id=st.uuids(), payload=st.binary(max_size=ch.CHUNK // 64))
def test_channel_frame_round_trip(kind: ch.Kind, msg_id: uuid.UUID, payload: bytes) -> None:
    frame = ch.decode(ch.encode(kind, msg_id, payload))
    assert (frame.kind, frame.msg_id, frame.payload) == (kind, msg_id, payload)


@SOME
@given(data=st.binary(max_size=200))
def test_channel_decoder_raises_only_frame_errors(data: bytes) -> None:
    with contextlib.suppress(ch.FrameError):
        frame = ch.decode(data)
        for head in (ch.RequestHead, ch.ResponseHead):
            head.from_json(frame.json())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@SOME
@given(
    doc=st.dictionaries(
        st.sampled_from(["method", "url", "headers", "status", "reason", "extra", "x"]), json_values, max_size=6
    )
)
def test_channel_heads_raise_only_frame_errors(doc: dict[str, object]) -> None:
    for head in (ch.RequestHead, ch.ResponseHead):
        with contextlib.suppress(ch.FrameError):
            head.from_json(doc)


@SOME
@given(
    method=names,
    url=st.text(max_size=40),
    headers=st.lists(st.tuples(names, st.text(max_size=20)), max_size=3),
    status=st.integers(100, 599),
    length=st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_channel_heads_round_trip(
    method: str, url: str, headers: list[tuple[str, str]], status: int, length: int | None
) -> None:
    req = ch.RequestHead(method, url, headers, content_length=length, has_body=bool(length))
    assert ch.RequestHead.from_json(ch.decode(ch.encode(ch.Kind.REQUEST, uuid.uuid4(), req.to_json())).json()) == req
    resp = ch.ResponseHead(status, "r", headers)
    assert ch.ResponseHead.from_json(json.loads(json.dumps(resp.to_json()))) == resp


# -- name mapping ---------------------------------------------------------------------------------
@SOME
@given(
    entries=st.lists(
        st.tuples(
            st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True), st.integers(0, 65535), st.ip_addresses().map(str)
        ),
        max_size=5,
    )
)
def test_parse_resolve_round_trip(entries: list[tuple[str, int, str]]) -> None:
    lines = [f"{h}:{p}:[{a}]" if ":" in a else f"{h}:{p}:{a}" for h, p, a in entries]
    assert parse_resolve(lines) == {(h, p): a for h, p, a in entries}


@SOME
@given(entries=st.lists(st.text(max_size=40), max_size=4))
def test_parse_resolve_raises_only_value_errors(entries: list[str]) -> None:
    with contextlib.suppress(ValueError):
        parse_resolve(entries)


# -- Entra: the DRS transport key and CSR, token validation --------------------------------------
def bcrypt_blob(e: int, n: int, bits: int) -> bytes:
    e_b, n_b = e.to_bytes((e.bit_length() + 7) // 8, "big"), n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"RSA1" + struct.pack("<LLLLL", bits, len(e_b), len(n_b), 0, 0) + e_b + n_b


def test_transport_key_round_trip() -> None:
    numbers = KEY.public_key().public_numbers()
    blob = base64.b64encode(bcrypt_blob(numbers.e, numbers.n, KEY.key_size)).decode()
    assert parse_transport_key(blob).public_numbers() == numbers


@SOME
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda t: b"RSA1" + t),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.integers(0, 2**20), st.integers(0, 2**64), st.integers(0, 5000)).map(lambda t: bcrypt_blob(*t)),
    ),
    b64=st.booleans(),
)
def test_transport_key_parser_raises_only_drs_errors(raw: bytes, b64: bool) -> None:
    with contextlib.suppress(DRSError):
        parse_transport_key(base64.b64encode(raw).decode() if b64 else raw.decode("latin-1"))


@SOME
@given(raw=st.binary(max_size=300))
def test_csr_check_raises_only_drs_errors(raw: bytes) -> None:
    with contextlib.suppress(DRSError):
        check_csr(base64.b64encode(raw).decode())


@SOME
@given(
    token=st.one_of(
        st.text(max_size=200),
        st.lists(st.binary(max_size=60), min_size=3, max_size=3).map(
            lambda parts: ".".join(base64.urlsafe_b64encode(p).decode().rstrip("=") for p in parts)
        ),
    )
)
def test_token_validators_raise_only_their_errors(token: str) -> None:
    cert = b.self_signed(KEY, b.name("site"), ekus=[])
    with contextlib.suppress(site_tokens.SiteTokenError):
        site_tokens.verify(token, cert=cert, hierarchy_id="H")
    with contextlib.suppress(EntraTokenError):
        asyncio.run(EntraKeys.from_certificates([cert]).validate(token, audiences=["a"]))
