"""What a JWT says before its signature is checked (the key it names, the tenant whose issuer to expect), read
without PyJWT's per-character scan.

PyJWT (>= 2.10) checks each character of every segment against the base64url alphabet in a Python generator each
time it loads a token: ~50 µs for a 1.3 KB token, and a token the CMG checks was loaded three or four times (the
header to pick the path, the header again to pick the key, the claims for the tenant, then the verification).
`header` and `header_and_claims` accept exactly what PyJWT's loading accepts (its alphabet by one regular
expression, its length, padding and canonical-encoding rules, a JSON object header with a string `kid`) and hand
anything else to PyJWT's own function, so a malformed token is refused with PyJWT's own error. `header` and
`header_and_claims` do not verify; `decode` is `jwt.decode` (PyJWT checks the signature, the algorithm and the
claims) with the token loaded the same lean way (issue 20).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from typing import Any

import jwt

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")  # PyJWT's _BASE64URL_ALPHABET, unpadded


def _segment(seg: bytes) -> bytes | None:
    """A segment's bytes, or None where PyJWT might answer otherwise (padding, junk, a non-canonical encoding)."""
    if len(seg) % 4 == 1 or _SEGMENT.fullmatch(seg) is None:
        return None
    try:
        decoded = base64.urlsafe_b64decode(seg + b"=" * (-len(seg) % 4))
    except binascii.Error:
        return None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != seg:
        return None
    return decoded


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class KnownHeaders:
    """JOSE header segments that `_parts` accepted, by their exact bytes, with the header they hold (bounded, the
    oldest first): a device signs every request with the same header (its certificate in x5c, ~2.5 KB of base64),
    so its decoding and canonical-encoding check are done once (issue 20). The segment's bytes are the whole input
    of that work: the same bytes give the same header. Each use gets its own copy of the header. Headers are
    kept before any signature is checked, so only segments of at most MAX_SEGMENT bytes (a device's, with room
    for a larger certificate): a larger one, which a 16 MiB form can hold, is decoded afresh each time."""

    MAX_SEGMENT = 8 * 1024

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._known: dict[bytes, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, segment: bytes) -> dict[str, Any] | None:
        with self._lock:
            found = self._known.get(segment)
        return None if found is None else dict(found)

    def add(self, segment: bytes, header: dict[str, Any]) -> None:
        if len(segment) > self.MAX_SEGMENT:
            return
        with self._lock:
            if len(self._known) >= self.size:
                self._known.pop(next(iter(self._known)))
            self._known[segment] = dict(header)


def _header(segment: bytes) -> dict[str, Any] | None:
    """The JOSE header of a segment PyJWT would load, else None."""
    decoded = _segment(segment)
    header = None if decoded is None else _json_object(decoded)
    # b64=false (a detached payload) and crit: PyJWT's own rules
    if header is None or "b64" in header or "crit" in header:
        return None
    if "kid" in header and not isinstance(header["kid"], str):
        return None
    return header


def _parts(token: object, known: KnownHeaders | None = None) -> tuple[dict[str, Any], bytes, bytes, bytes] | None:
    """The header, the payload's bytes, the signing input and the signature's bytes of a compact JWS PyJWT would
    load, else None. KNOWN: header segments accepted before."""
    if not isinstance(token, str) or not token.isascii():
        return None
    raw = token.encode("ascii")
    parts = raw.split(b".")
    if len(parts) != 3:
        return None
    header = known.get(parts[0]) if known is not None else None
    if header is None:
        header = _header(parts[0])
        if header is None:
            return None
        if known is not None:
            known.add(parts[0], header)
    payload_seg, signature_seg = _segment(parts[1]), _segment(parts[2])
    if payload_seg is None or signature_seg is None:
        return None
    return header, payload_seg, raw[: len(raw) - len(parts[2]) - 1], signature_seg


def _load(token: object) -> tuple[dict[str, Any], bytes] | None:
    """The header and the payload's bytes of a compact JWS PyJWT would load, else None."""
    found = _parts(token)
    return None if found is None else (found[0], found[1])


def header(token: str) -> dict[str, Any]:
    """As `jwt.get_unverified_header(token)` (its errors included)."""
    loaded = _load(token)
    if loaded is None:
        return jwt.get_unverified_header(token)
    return loaded[0]


def header_and_claims(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """As `jwt.get_unverified_header(token)` and `jwt.decode(token, options={"verify_signature": False})` (their
    errors included)."""
    loaded = _load(token)
    claims = _json_object(loaded[1]) if loaded is not None else None
    if loaded is None or claims is None:
        return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
    return loaded[0], claims


class _LeanJWS(jwt.PyJWS):
    """PyJWT's JWS with the token loaded by `_parts` (a regular expression per segment) and by PyJWT's own loading
    whenever `_parts` says no: the same (payload, signing input, header, signature), PyJWT's errors for the rest.
    Everything after the loading (the algorithm allowed, the signature, the claims) is PyJWT's."""

    known = KnownHeaders()  # the headers `decode` met: Entra's device-signed requests and DRS bearers

    def _load(self, token: str | bytes) -> tuple[bytes, bytes, dict[str, Any], bytes]:
        found = _parts(token, self.known)
        if found is None:
            return super()._load(token)
        header, payload, signing_input, signature = found
        return payload, signing_input, header, signature


def _lean_pyjwt() -> jwt.PyJWT:
    """A PyJWT whose `decode` loads the token as `_LeanJWS` does. PyJWT (2.10+) keeps its JWS in `_jws`; where a
    release does not, this is plain PyJWT."""
    pyjwt = jwt.PyJWT()
    jws = getattr(pyjwt, "_jws", None)
    if isinstance(jws, jwt.PyJWS):
        lean = _LeanJWS()
        lean.options = jws.options
        pyjwt._jws = lean
    return pyjwt


_VERIFIER = _lean_pyjwt()


def decode(token: str, key: Any, **kwargs: Any) -> dict[str, Any]:
    """`jwt.decode(token, key, **kwargs)` (the same checks, claims and errors) without PyJWT's per-character scan of
    the token (~0.1 ms for a 1.4 KB token, ~0.17 ms for a device's signed request with its certificate in x5c): the
    DRS join's bearer token and the device-signed token requests (issue 20)."""
    claims: dict[str, Any] = _VERIFIER.decode(token, key, **kwargs)
    return claims
