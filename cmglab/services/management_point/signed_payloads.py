"""PayloadSignatures verified before, remembered (issue 20). A registered client signs the same message body the same
way every cycle (RequestAssignments names only the client, and PKCS#1 v1.5 signatures are deterministic), so it
sends the same payload and PayloadSignature each time; the RSA verification was the largest part of what a policy
assignment request costs in its worker thread once its rows were kept. A verification's outcome depends only on the
key, the bytes and the signature: a triple verified before with the same registered certificate is verified.

Each triple is remembered by a SHA-256 digest of the certificate's text, the signature and the payload (each
length-prefixed), so an entry is 32 bytes whatever the payload's size. The client's record is still read per
request (its registered certificate decides the triple), a new certificate or one changed byte is a miss, verified
in full. A failed verification is never remembered. Bounded: the oldest entries go first."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

SIZE = 8192


def _digest(cert_hex: str, payload: bytes, signature: str) -> bytes:
    h = hashlib.sha256()
    for part in (cert_hex.encode(), signature.encode(), payload):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


class VerifiedPayloads:
    """`check(cert_hex, payload, signature, verify)`: VERIFY's answer, which is True without calling it for a triple
    verified before."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._known: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, cert_hex: str, payload: bytes, signature: str, verify: Callable[[], bool]) -> bool:
        key = _digest(cert_hex, payload, signature)
        with self._lock:
            if key in self._known:
                return True
        if not verify():
            return False
        with self._lock:
            self._known[key] = None
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._known)
