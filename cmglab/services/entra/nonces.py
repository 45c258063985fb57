"""Server nonces (`srv_challenge`, the DRS nonce service): issued without a write, spent once.

A nonce carries the time it expires and 16 random bytes, with a MAC under a key every Entra process of the lab
derives from the lab's admin token (as the CMG signs its content URLs), so any worker or replica checks a nonce
another issued. Its first use writes it to the store's `nonces` table, where it stays until a minute after it
expires (store.NONCE_CLOCK_SKEW, for clocks that differ): the row's primary key makes the use single, also when one
nonce is sent on several connections at once. Issuing writes nothing, as Entra's own opaque nonces need no lookup
(issue 20: one database write less per device-signed request).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct

from cmglab.runtime.lab import Lab

PREFIX = "AwABEgEAAAADAOz_BQD0_"  # how Entra's nonces begin
_TAG = 16  # bytes of the HMAC-SHA256 kept
_BODY = 8 + 16  # the expiry (seconds since the epoch, big-endian) and the random part
_TEXT = len(PREFIX) + len(base64.urlsafe_b64encode(bytes(_BODY + _TAG)).rstrip(b"="))


class NonceKey:
    """Issues nonces and tells the expiry of one it issued (or another process of the lab did)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def of_lab(cls, lab: Lab) -> NonceKey:
        return cls(hmac.new(lab.admin_token().encode(), b"entra-nonces", hashlib.sha256).digest())

    def issue(self, expires_at: int) -> str:
        body = struct.pack(">Q", expires_at) + secrets.token_bytes(16)
        return PREFIX + base64.urlsafe_b64encode(body + self._tag(body)).rstrip(b"=").decode()

    def expiry(self, value: str) -> int | None:
        """The expiry (epoch seconds) of a nonce issued with this key; None for any other text."""
        if len(value) != _TEXT or not value.startswith(PREFIX):
            return None
        text = value[len(PREFIX) :]
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        # one text per nonce: the last character's unused bits could spell the same bytes otherwise, and the use
        # is recorded by the text
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
            return None
        body, tag = raw[:_BODY], raw[_BODY:]
        if len(raw) != _BODY + _TAG or not hmac.compare_digest(tag, self._tag(body)):
            return None
        return int(struct.unpack(">Q", body[:8])[0])

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_TAG]
