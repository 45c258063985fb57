"""The MP's reply header written directly (ccm_messaging.encode_reply, issue 20) is the text MsgHeader.to_xml writes
for a reply's fields, byte for byte: the oracle below is encode_reply as it was (a MsgHeader, then encode_message),
with the reply's ID and SentTime fixed on both sides."""

from __future__ import annotations

import itertools

import pytest

from cmglab.wire import ccm_messaging as cm

ID, SENT = "{6F1E2D3C-0000-4000-8000-00000000ABCD}", "2026-11-26T14:20:00Z"


def oracle(request: cm.MsgHeader, body_xml: str, *, source_host: str, boundary: str = cm.BOUNDARY) -> bytes:
    compress = (request.reply_compression or "zlib").lower() != "none"
    payload, length = cm.body_payload(body_xml, compress=compress, crlf=False)
    reply = cm.MsgHeader(
        target_endpoint=(request.reply_to or "").split(":")[-1] or "SccmMessaging",
        id=ID,
        correlation_id=request.id or cm.ZERO_GUID,
        source_host=source_host,
        target_address=request.reply_to or f"direct:{request.source_host}:SccmMessaging",
        target_host=request.source_host,
        sent_time=SENT,
        reply_mode="Sync",
        reply_compression=None,
        body_length=length,
        zlib=compress,
        protocol=request.protocol or "http",
    )
    return cm.encode_message(reply, payload, boundary=boundary)


REPLY_TO = [None, "", "direct:CLIENT1:SccmMessaging", "a:b:c", "x&y<z>:\"q'"]
SOURCE = ["", "CLIENT1", "host&<>\"'", "ünï"]
PROTOCOL = ["", "http", "https", "a&b"]
COMPRESSION = [None, "zlib", "none", "NONE"]
IDS = ["", "{ABC}", "<id & more>"]


@pytest.mark.parametrize(
    "reply_to,source,protocol,compression", list(itertools.product(REPLY_TO, SOURCE, PROTOCOL, COMPRESSION))
)
def test_the_reply_is_the_headers_own_text(
    monkeypatch: pytest.MonkeyPatch, reply_to: str | None, source: str, protocol: str, compression: str | None
) -> None:
    monkeypatch.setattr(cm, "guid", lambda: ID)
    monkeypatch.setattr(cm, "utc_timestamp", lambda when=None: SENT)
    for msg_id, mp_host, boundary in itertools.product(IDS, ["MP1", "m&p"], [cm.BOUNDARY, "other-b"]):
        request = cm.MsgHeader(
            target_endpoint="MP_LocationManager",
            id=msg_id,
            reply_to=reply_to,
            source_host=source,
            protocol=protocol,
            reply_compression=compression,
        )
        body = '<SiteInfoReply SchemaVersion="1.00"/>'
        got = cm.encode_reply(request, body, source_host=mp_host, boundary=boundary)
        assert got == oracle(request, body, source_host=mp_host, boundary=boundary)
        header, text = cm.decode_reply(got, f'multipart/mixed; boundary="{boundary}"')
        assert text == body and header.correlation_id == (msg_id or cm.ZERO_GUID)
