"""The site key: policy bodies (the NAA secret policy among them) are stored encrypted with it, so that a
copy of the site database alone gives no secret away. The key is `<lab>/site-key` (0600), made on first
use; Fernet (AES-128-CBC + HMAC-SHA256, `cryptography`). A body stored before sealing existed is read as is.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

_PREFIX = "fernet:"


def site_key(lab_dir: Path) -> bytes:
    """The lab's site key, created (0600, exclusively: replicas starting together agree) when missing."""
    path = lab_dir / "site-key"
    lab_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class Sealer:
    def __init__(self, key: bytes) -> None:
        self.fernet = Fernet(key)

    def seal(self, text: str) -> str:
        return _PREFIX + self.fernet.encrypt(text.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(_PREFIX):
            return stored  # stored before sealing (an older lab database)
        try:
            return self.fernet.decrypt(stored[len(_PREFIX) :].encode()).decode()
        except InvalidToken as e:
            raise ValueError("a sealed policy body does not open with this lab's site key") from e
