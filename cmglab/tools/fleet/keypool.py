"""The key pool: RSA keys generated ahead of a fleet run (`cmglab fleet keys --count N`).

A lab shortcut, documented as one: a real device makes a fresh key pair for each of its four keys
(Entra device key, DRS transport key, SMS signing and SMS encryption keys) and so does every agent
command; 2048-bit generation costs ~50-100 ms of CPU, which would otherwise be what a fleet measures.
Keys are unique within a run (each is handed out once); a pool file is reused by later runs.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.pki.builders import key_pem, new_key

KEYS_PER_DEVICE = 4
_END = b"-----END PRIVATE KEY-----\n"


def _generate(count: int) -> bytes:
    return b"".join(key_pem(new_key()) for _ in range(count))


def generate(path: Path, devices: int, *, workers: int | None = None) -> int:
    """Write keys for `devices` devices to `path` (PEM, 0600), using every CPU; returns the key count."""
    total = devices * KEYS_PER_DEVICE
    workers = max(1, min(workers or os.cpu_count() or 1, total))
    chunks = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        blob = b"".join(pool.map(_generate, chunks))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    return total


class KeyPool:
    """Hands out each pooled key once (thread-safe); fresh keys once the pool runs dry."""

    def __init__(self, keys: list[rsa.RSAPrivateKey]) -> None:
        self._keys = keys
        self._lock = threading.Lock()
        self.fresh = 0  # keys generated because the pool was empty

    @classmethod
    def load(cls, path: Path, *, share: int = 0, shares: int = 1) -> KeyPool:
        """The pool in `path`, or one of `shares` disjoint shares of it (processes sharing one pool file)."""
        pems = [part for part in path.read_bytes().split(_END) if part.strip()][share::shares]
        # these keys were made by generate(): skipping the (slow) RSA consistency check is safe here
        keys = [
            serialization.load_pem_private_key(pem + _END, None, unsafe_skip_rsa_key_validation=True) for pem in pems
        ]
        return cls([k for k in keys if isinstance(k, rsa.RSAPrivateKey)])

    def __len__(self) -> int:
        return len(self._keys)

    def take(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._keys:
                return self._keys.pop()
            self.fresh += 1
        return new_key()
