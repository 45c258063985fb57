"""The channel's byte layout (cmglab/wire/cmg_channel.py): a *_WHOLE frame means head + body + end."""

from __future__ import annotations

import uuid

import pytest

from cmglab.wire.cmg_channel import (
    CHUNK,
    MAX_FRAME,
    FrameError,
    Kind,
    RequestHead,
    decode,
    encode_whole,
    split_whole,
)


def test_whole_request_round_trips() -> None:
    head = RequestHead("CCM_POST", "https://cmg/CCM_Proxy_MutualAuth/1/ccm_system/request", [("A", "b")], has_body=True)
    msg_id = uuid.uuid4()
    body = bytes(range(256)) * 10
    frame = decode(encode_whole(Kind.REQUEST_WHOLE, msg_id, head.to_json(), body) or b"")
    assert frame.kind == Kind.REQUEST_WHOLE and frame.msg_id == msg_id
    got_head, got_body = split_whole(frame)
    assert RequestHead.from_json(got_head) == head and got_body == body


def test_whole_frame_only_when_it_fits() -> None:
    head = {"status": 200, "reason": "OK", "headers": []}
    assert encode_whole(Kind.RESPONSE_WHOLE, uuid.uuid4(), head, b"x" * CHUNK) is not None
    assert encode_whole(Kind.RESPONSE_WHOLE, uuid.uuid4(), head, b"x" * MAX_FRAME) is None


@pytest.mark.parametrize("payload", [b"", b"\x00\x00", b"\x00\x00\x00\x09{}", b"\x00\x00\x00\x02[]"])
def test_malformed_whole_frame_is_a_frame_error(payload: bytes) -> None:
    frame = decode(bytes([Kind.RESPONSE_WHOLE]) + uuid.uuid4().bytes + payload)
    with pytest.raises(FrameError):
        split_whole(frame)
