"""jwt_peek reads a token's unverified header and claims exactly as PyJWT does: the same values for what PyJWT
loads, PyJWT's own error (type and text) for what it refuses, whatever the token's shape; its verifying `decode`
answers as `jwt.decode` with the same key and checks."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from cmglab.wire import jwt_peek

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TOKEN = jwt.encode(
    {"aud": "https://cmg", "tid": "t-1", "exp": 2_000_000_000, "deviceid": "d-1"},
    KEY,
    algorithm="RS256",
    headers={"kid": "k1", "x5t": "abc"},
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as e:  # the error PyJWT raises is part of the contract
        return type(e).__name__, str(e)


def pyjwt_both(token: Any) -> Any:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def assert_same(token: Any) -> None:
    assert outcome(lambda: jwt_peek.header(token)) == outcome(lambda: jwt.get_unverified_header(token))
    assert outcome(lambda: jwt_peek.header_and_claims(token)) == outcome(lambda: pyjwt_both(token))


HEADER, PAYLOAD, SIGNATURE = TOKEN.split(".")
SHAPES = [
    TOKEN,
    TOKEN + "=",  # padding where none belongs
    f"{HEADER}==.{PAYLOAD}.{SIGNATURE}",
    f"{HEADER}.{PAYLOAD}.{SIGNATURE}.x",  # four segments
    f"{HEADER}.{PAYLOAD}",  # two
    "",
    "...",
    f"{HEADER}!.{PAYLOAD}.{SIGNATURE}",  # junk outside the alphabet
    f"{HEADER}.{PAYLOAD}.{SIGNATURE[:-1]}",  # a length PyJWT refuses (or a non-canonical last character)
    f"{HEADER[:-1]}B.{PAYLOAD}.{SIGNATURE}",
    f"{HEADER}.{PAYLOAD}.{SIGNATURE[:-1]}B",
    f"{HEADER}.{PAYLOAD}.{SIGNATURE}é",
    f"{b64(b'[1, 2]')}.{PAYLOAD}.{SIGNATURE}",  # a header that is no JSON object
    f"{b64(b'not json')}.{PAYLOAD}.{SIGNATURE}",
    f"{b64(json.dumps({'alg': 'RS256', 'kid': 7}).encode())}.{PAYLOAD}.{SIGNATURE}",  # kid not a string
    f"{b64(json.dumps({'alg': 'RS256', 'b64': False}).encode())}.{PAYLOAD}.{SIGNATURE}",
    f"{b64(json.dumps({'alg': 'RS256', 'b64': False}).encode())}..{SIGNATURE}",
    f"{b64(json.dumps({'alg': 'RS256', 'crit': ['exp']}).encode())}.{PAYLOAD}.{SIGNATURE}",
    f"{b64(json.dumps({'alg': 'RS256', 'crit': ['b64'], 'b64': True}).encode())}.{PAYLOAD}.{SIGNATURE}",
    f"{HEADER}.{b64(b'[1]')}.{SIGNATURE}",  # claims that are no JSON object
    f"{HEADER}.{b64(b'{')}.{SIGNATURE}",
    f"{HEADER}..{SIGNATURE}",
    f"{HEADER}.{PAYLOAD}.",
]


@pytest.mark.parametrize("token", SHAPES)
def test_each_shape_reads_as_pyjwt_reads_it(token: str) -> None:
    assert_same(token)


def test_a_token_that_is_not_a_string_gets_pyjwts_answer() -> None:
    assert_same(TOKEN.encode())
    assert_same(None)


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.!+/ é"


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(TOKEN)), st.integers(0, 3), st.text(ALPHABET, max_size=4))
def test_any_edit_of_a_token_reads_as_pyjwt_reads_it(at: int, cut: int, insert: str) -> None:
    assert_same(TOKEN[:at] + insert + TOKEN[at + cut :])


@settings(max_examples=200, deadline=None)
@given(st.text(ALPHABET, max_size=40))
def test_any_short_text_reads_as_pyjwt_reads_it(token: str) -> None:
    assert_same(token)


VERIFY: dict[str, Any] = {"algorithms": ["RS256"], "audience": ["https://cmg"], "options": {"require": ["exp", "tid"]}}


def assert_same_verified(token: Any, key: Any = None, **checks: Any) -> None:
    key = KEY.public_key() if key is None else key
    kwargs = {**VERIFY, **checks}
    assert outcome(lambda: jwt_peek.decode(token, key, **kwargs)) == outcome(lambda: jwt.decode(token, key, **kwargs))


@pytest.mark.parametrize("token", SHAPES)
def test_each_shape_verifies_as_pyjwt_verifies_it(token: str) -> None:
    assert_same_verified(token)


def test_decode_checks_the_signature_the_algorithm_and_the_claims_as_pyjwt() -> None:
    assert jwt_peek.decode(TOKEN, KEY.public_key(), **VERIFY)["deviceid"] == "d-1"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_same_verified(TOKEN, other.public_key())  # another key: InvalidSignatureError
    assert_same_verified(TOKEN, algorithms=["ES256"])  # an algorithm not allowed
    assert_same_verified(TOKEN, audience=["https://elsewhere"])
    assert_same_verified(jwt.encode({"aud": "https://cmg", "tid": "t", "exp": 1}, KEY, algorithm="RS256"))  # expired
    assert_same_verified(jwt.encode({"aud": "https://cmg", "exp": 2_000_000_000}, KEY, algorithm="RS256"))  # no tid
    forged = f"{b64(json.dumps({'alg': 'none'}).encode())}.{PAYLOAD}."
    assert_same_verified(forged)
    hs = jwt.encode({"aud": "https://cmg", "tid": "t", "exp": 2_000_000_000}, "s" * 32, algorithm="HS256")
    assert_same_verified(hs)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt_peek.decode(
            f"{HEADER}.{b64(json.dumps({'aud': 'https://cmg', 'tid': 'x'}).encode())}.{SIGNATURE}",
            KEY.public_key(),
            **VERIFY,
        )


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(TOKEN)), st.integers(0, 3), st.text(ALPHABET, max_size=4))
def test_any_edit_of_a_token_verifies_as_pyjwt_verifies_it(at: int, cut: int, insert: str) -> None:
    assert_same_verified(TOKEN[:at] + insert + TOKEN[at + cut :])


def test_decode_knows_a_header_by_its_exact_bytes_and_hands_out_copies() -> None:
    """A header segment seen before (a device's ~2.5 KB header with its certificate, issue 20) is not decoded again:
    the same bytes hold the same header. A header changed after it was handed out stays as it was for the next
    token, and a segment one character off is read afresh (here: a header PyJWT refuses, with PyJWT's error)."""
    known = jwt_peek.KnownHeaders(size=2)
    header_seg = TOKEN.split(".")[0].encode()
    found = jwt_peek._parts(TOKEN, known)
    assert found is not None and found[0] == jwt.get_unverified_header(TOKEN)
    found[0]["alg"] = "none"
    again = jwt_peek._parts(TOKEN, known)
    assert again is not None and again[0]["alg"] == "RS256" and known.get(header_seg) == again[0]
    for size in range(3):  # bounded: the oldest goes first
        known.add(f"seg{size}".encode(), {"n": size})
    assert known.get(header_seg) is None and known.get(b"seg2") == {"n": 2}
    assert_same_verified(TOKEN)
    assert_same_verified(TOKEN)  # known now
    assert_same_verified(f"{b64(json.dumps({'alg': 'RS256', 'kid': 7}).encode())}.{PAYLOAD}.{SIGNATURE}")
    assert_same_verified(f"{HEADER}A.{PAYLOAD}.{SIGNATURE}")
