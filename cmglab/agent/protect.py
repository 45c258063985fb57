"""DPAPI stand-in: secrets at rest on the device are AES-256-GCM sealed with a per-device key.

Windows protects the CCM token cache, the MP-issued client token and WAM accounts with DPAPI (machine
scope for S-1-5-18). Here the "machine key" is `<home>/Keys/dpapi.key` (0600), made once per device.
The purpose string is authenticated data, so a blob cannot be swapped between uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"DPAPI1"


class ProtectError(Exception):
    """A sealed blob that cannot be opened (wrong device, wrong purpose or tampered)."""


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, atomically (a crash leaves the old file or none)."""
    tmp = f"{path}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileNotFoundError:  # the folder's first file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # a .tmp left by a crash keeps its old mode through O_TRUNC
        f.write(data)
    os.replace(tmp, path)


class DataProtector:
    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._key: bytes | None = None

    def _machine_key(self) -> bytes:
        if self._key is None:
            if not self.key_path.exists():
                write_private(self.key_path, AESGCM.generate_key(bit_length=256))
            self._key = self.key_path.read_bytes()
        return self._key

    def protect(self, data: bytes, purpose: str) -> bytes:
        nonce = os.urandom(12)
        return MAGIC + nonce + AESGCM(self._machine_key()).encrypt(nonce, data, purpose.encode())

    def unprotect(self, blob: bytes, purpose: str) -> bytes:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
            raise ProtectError("not a protected blob")
        nonce, sealed = blob[len(MAGIC) : len(MAGIC) + 12], blob[len(MAGIC) + 12 :]
        try:
            return AESGCM(self._machine_key()).decrypt(nonce, sealed, purpose.encode())
        except InvalidTag as e:
            raise ProtectError(f"cannot unprotect ({purpose}): wrong key or tampered") from e

    # JSON documents sealed in files: the token caches, the WAM account
    def save(self, path: Path, value: Any, purpose: str) -> None:
        write_private(path, self.protect(json.dumps(value).encode(), purpose))

    def load(self, path: Path, purpose: str) -> Any:
        if not path.exists():
            return None
        return json.loads(self.unprotect(path.read_bytes(), purpose))
