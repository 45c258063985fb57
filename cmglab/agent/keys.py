"""Where the device's new RSA keys come from (Entra device and transport keys, SMS signing and
encryption keys). A real device makes each key on the spot, and so does every agent command; the fleet
(`cmglab fleet --key-pool`) installs a pre-generated pool instead, a lab shortcut so that thousands of
simulated devices do not spend their time in RSA key generation."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.pki import builders

KeySource = Callable[[], rsa.RSAPrivateKey]

_source: KeySource | None = None


def new_key() -> rsa.RSAPrivateKey:
    return _source() if _source is not None else builders.new_key()


def use_source(source: KeySource | None) -> None:
    """Install a key source for this process (None: back to fresh keys)."""
    global _source
    _source = source
