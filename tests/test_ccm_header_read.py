"""MsgHeader.from_xml reads the <Msg> children in one pass (issue 20): the same header as reading each child with
`root.find` (the first of each name), for every shape a sender may send: children missing, repeated, empty, out of
order, with whitespace, namespaced, Body/Hooks twice, several Attachments, unknown children."""

from __future__ import annotations

import re
from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmglab.wire import ccm_messaging as cm

TEXTS = (
    "ID",
    "SentTime",
    "CorrelationID",
    "TargetAddress",
    "TargetHost",
    "SourceHost",
    "SourceID",
    "ReplyTo",
    "ReplyMode",
    "Protocol",
    "Priority",
    "Timeout",
    "TargetEndpoint",
)


def read_by_find(text: str) -> cm.MsgHeader:
    """The header as the reader before the one-pass read took it: each child by root.find (the oracle)."""
    root = cm.parse_xml(text)
    assert root.tag == "Msg"

    def child(name: str) -> str | None:
        el = root.find(name)
        return (el.text or "").strip() if el is not None else None

    h = cm.MsgHeader(target_endpoint="", id=child("ID") or "", sent_time=child("SentTime") or "")
    h.correlation_id = child("CorrelationID") or cm.ZERO_GUID
    h.target_address = child("TargetAddress")
    h.target_host = child("TargetHost") or ""
    h.source_host = child("SourceHost") or ""
    h.source_id = child("SourceID")
    h.reply_to = child("ReplyTo")
    h.reply_mode = child("ReplyMode") or "Sync"
    h.protocol = child("Protocol") or "http"
    h.priority = child("Priority") or "0"
    h.timeout = child("Timeout") or "60000"
    h.schema_version = root.get("SchemaVersion", "1.1")
    h.reply_compression = root.get("ReplyCompression")
    endpoint = child("TargetEndpoint")
    if not endpoint and h.target_address:
        endpoint = re.split(r"[:\]]", h.target_address)[-1]
    h.target_endpoint = endpoint or ""
    body = root.find("Body")
    if body is not None:
        h.body_length = int(body.get("Length", "0"))
        h.body_offset = int(body.get("Offset", "0"))
    h.zlib = False
    hooks = root.find("Hooks")
    if hooks is not None:
        for hook in hooks:
            name = (hook.get("Name") or "").lower()
            if name == "zlib-compress":
                h.zlib = True
            elif name == "clientauth":
                h.clientauth = {p.get("Name", ""): (p.text or "").strip() for p in hook.findall("Property")}
    h.attachments = [dict(a.attrib) for a in root.findall("Attachment")]
    return h


def fields(h: cm.MsgHeader) -> dict[str, object]:
    return asdict(h)


SHAPES = [
    cm.MsgHeader(target_endpoint="MP_LocationManager").to_xml(),
    cm.MsgHeader(
        target_endpoint="MP_PolicyManager",
        source_id="GUID:1",
        reply_to="direct:HOST:SccmMessaging",
        clientauth={"PayloadSignature": "AB", "PublicKey": "CD"},
        attachments=[{"Name": "a", "Size": "1"}, {"Name": "b"}],
        extra={"ReqVersion": "5931"},
    ).to_xml(),
    # repeated children: the first of each name counts
    "<Msg><ID>{1}</ID><ID>{2}</ID><TargetEndpoint>A</TargetEndpoint><TargetEndpoint>B</TargetEndpoint>"
    '<Body Length="3"/><Body Length="9"/><Hooks><Hook3 Name="zlib-compress"/></Hooks><Hooks/></Msg>',
    # empty and whitespace texts, no endpoint: taken from the address
    "<Msg><ID> </ID><SourceHost>\n h \n</SourceHost><TargetEndpoint/>"
    "<TargetAddress>raw:httpsync:{mp}:MP_X</TargetAddress></Msg>",
    "<Msg><TargetAddress>mp:[http]MP_LocationManager</TargetAddress></Msg>",
    # nested and namespaced look-alikes are not children of <Msg>
    '<Msg xmlns:p="urn:p"><p:ID>{n}</p:ID><X><ID>{deep}</ID></X><ID>{top}</ID></Msg>',
    # unknown children, attachments around the rest, hooks without a name
    '<Msg><Attachment Name="1"/><Foo>bar</Foo><Hooks><Hook2/><Hook2 Name="CLIENTAUTH"><Property>v</Property>'
    '<Property Name="k"> w </Property></Hook2></Hooks><Attachment/><Timeout>5</Timeout></Msg>',
    "<Msg/>",
    '<Msg ReplyCompression="none" SchemaVersion="1.0"><Body Offset="4"/></Msg>',
]


@pytest.mark.parametrize("text", SHAPES)
def test_one_pass_reads_the_header_root_find_reads(text: str) -> None:
    assert fields(cm.MsgHeader.from_xml(text)) == fields(read_by_find(text))


CHILD = st.sampled_from([*TEXTS, "Body", "Hooks", "Attachment", "Other"])
VALUE = st.text(alphabet="ab:] \n{}", max_size=6)


@st.composite
def headers(draw: st.DrawFn) -> str:
    parts = []
    for name in draw(st.lists(CHILD, max_size=12)):
        if name == "Body":
            parts.append(f'<Body Length="{draw(st.integers(0, 99))}" Offset="{draw(st.integers(0, 9))}"/>')
        elif name == "Hooks":
            hook = draw(
                st.sampled_from(
                    [
                        '<Hook3 Name="zlib-compress"/>',
                        '<Hook2 Name="clientauth"><Property Name="p">x</Property></Hook2>',
                        "<Hook9/>",
                    ]
                )
            )
            parts.append(f"<Hooks>{hook}</Hooks>")
        elif name == "Attachment":
            parts.append(f'<Attachment Name="{draw(st.integers(0, 9))}"/>')
        else:
            parts.append(f"<{name}>{draw(VALUE)}</{name}>")
    return "<Msg>" + "".join(parts) + "</Msg>"


@settings(max_examples=300, deadline=None)
@given(text=headers())
def test_one_pass_reads_any_header_as_root_find_does(text: str) -> None:
    assert fields(cm.MsgHeader.from_xml(text)) == fields(read_by_find(text))
