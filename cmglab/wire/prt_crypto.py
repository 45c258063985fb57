"""The primary refresh token's cryptography, as both sides speak it ([MS-OAPXBC]; ROADtools roadlib
`auth.calculate_derived_key*`, `decrypt_auth_response`, `deviceauth.decrypt_jwe_with_transport_key`).

- The session key (32 random bytes) reaches the device in `session_key_jwe`: a compact JWE whose
  encrypted-key part is the session key under RSA-OAEP (SHA-1) to the device's transport key
  ([MS-OAPXBC] 3.1.5.1.2.2, 3.1.5.1.2.3: "the relevant part of the JWE is the encrypted key section").
- Requests made with the PRT, and PRT cookies (`x-ms-RefreshTokenCredential`), are HS256 JWTs signed with
  a key derived from the session key: NIST SP 800-108 KDF in counter mode with HMAC-SHA256, label
  "AzureAD-SecureConversation", context = the header's `ctx` (KDFv1) or SHA256(ctx || JWT payload bytes)
  when the header says `kdf_ver: 2` ([MS-OAPXBC] 3.1.5.1.3, 3.1.5.2.1.3).
- Replies to such requests are compact JWEs (`alg: dir`) encrypted with a key derived the same way from
  the JWE header's `ctx` (KDFv1): AES-256-GCM, the base64url header as additional data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

LABEL = b"AzureAD-SecureConversation"
SESSION_KEY_BYTES = 32
KDF_VERSIONS = (1, 2)
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # SHA-1 (the protocol's)


class PrtCryptoError(ValueError):
    """A JWS/JWE of the PRT protocol that does not parse, verify or decrypt."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(session_key: bytes, context: bytes) -> bytes:
    """SP 800-108 counter-mode HMAC-SHA256: [i]_4 || label || 0x00 || context || [256]_4, 32 bytes."""
    kdf = KBKDFHMAC(
        algorithm=hashes.SHA256(),
        mode=Mode.CounterMode,
        length=32,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=LABEL,
        context=context,
        fixed=None,
    )
    return kdf.derive(session_key)


def kdf_context(ctx: bytes, payload_b64: str, kdf_ver: int) -> bytes:
    """The KDF context of a signed JWT: ctx itself (v1) or SHA256(ctx || the payload's bytes) (v2)."""
    return hashlib.sha256(ctx + unb64url(payload_b64)).digest() if kdf_ver == 2 else ctx


def new_session_key() -> bytes:
    return os.urandom(SESSION_KEY_BYTES)


# -- session_key_jwe ---------------------------------------------------------------------------
def seal_session_key(session_key: bytes, transport_key: rsa.RSAPublicKey) -> str:
    """A compact JWE (RSA-OAEP, A256GCM) whose content-encryption key is the session key."""
    header = b64url(json.dumps({"enc": "A256GCM", "alg": "RSA-OAEP"}, separators=(",", ":")).encode())
    iv = os.urandom(12)
    sealed = AESGCM(session_key).encrypt(iv, b"{}", header.encode("ascii"))
    return ".".join(
        [
            header,
            b64url(transport_key.encrypt(session_key, _OAEP)),
            b64url(iv),
            b64url(sealed[:-16]),
            b64url(sealed[-16:]),
        ]
    )


def open_session_key(session_key_jwe: str, transport_key: rsa.RSAPrivateKey) -> bytes:
    parts = session_key_jwe.split(".")
    if len(parts) != 5:
        raise PrtCryptoError("session_key_jwe is not a compact JWE")
    try:
        key = transport_key.decrypt(unb64url(parts[1]), _OAEP)
    except ValueError as e:
        raise PrtCryptoError("session_key_jwe is not encrypted to this transport key") from e
    if len(key) != SESSION_KEY_BYTES:
        raise PrtCryptoError("the session key is not 32 bytes")
    return key


# -- session-key-signed JWTs (token requests with a PRT, PRT cookies) -------------------------------
def sign(payload: dict[str, Any], session_key: bytes, *, kdf_ver: int = 2) -> str:
    ctx = os.urandom(24)
    header: dict[str, Any] = {"ctx": base64.b64encode(ctx).decode()}
    if kdf_ver == 2:
        header["kdf_ver"] = 2
    unsigned = jwt.encode(payload, b"\0" * 32, algorithm="HS256", headers=header)  # the payload bytes to sign
    key = derive_key(session_key, kdf_context(ctx, unsigned.split(".")[1], kdf_ver))
    return jwt.encode(payload, key, algorithm="HS256", headers=header)


def signed_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload of a session-key-signed JWT, unverified (the payload names the PRT)."""
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise PrtCryptoError(f"not a JWT: {e}") from e
    if header.get("alg") != "HS256" or not isinstance(header.get("ctx"), str):
        raise PrtCryptoError("a session-key-signed JWT is HS256 with a ctx header")
    return header, payload


def kdf_version(header: dict[str, Any]) -> int:
    raw = header.get("kdf_ver", 1)
    try:
        version = int(raw)
    except (TypeError, ValueError) as e:
        raise PrtCryptoError(f"kdf_ver {raw!r} is not a number") from e
    if version not in KDF_VERSIONS:
        raise PrtCryptoError(f"kdf_ver {version} is not supported")
    return version


def verify(token: str, session_key: bytes) -> dict[str, Any]:
    """The payload of a JWT signed with a key derived from `session_key`; PrtCryptoError otherwise."""
    header, _ = signed_parts(token)
    try:
        ctx = base64.b64decode(header["ctx"], validate=True)
    except ValueError as e:
        raise PrtCryptoError("ctx is not base64") from e
    if len(ctx) < 16:
        raise PrtCryptoError("ctx is shorter than 16 bytes")
    key = derive_key(session_key, kdf_context(ctx, token.split(".")[1], kdf_version(header)))
    try:
        payload: dict[str, Any] = jwt.decode(
            token, key, algorithms=["HS256"], options={"verify_aud": False, "verify_iss": False, "verify_iat": False}
        )
    except jwt.PyJWTError as e:
        raise PrtCryptoError(f"the signature does not verify with the session key: {e}") from e
    return payload


# -- session-key-encrypted replies ---------------------------------------------------------------
def encrypt_reply(body: bytes, session_key: bytes) -> str:
    ctx = os.urandom(24)
    header = b64url(
        json.dumps(
            {"alg": "dir", "enc": "A256GCM", "ctx": base64.b64encode(ctx).decode()}, separators=(",", ":")
        ).encode()
    )
    iv = os.urandom(12)
    sealed = AESGCM(derive_key(session_key, ctx)).encrypt(iv, body, header.encode("ascii"))
    return ".".join([header, "", b64url(iv), b64url(sealed[:-16]), b64url(sealed[-16:])])


def decrypt_reply(jwe: str, session_key: bytes) -> bytes:
    parts = jwe.split(".")
    if len(parts) != 5:
        raise PrtCryptoError("the reply is not a compact JWE")
    try:
        header = json.loads(unb64url(parts[0]))
        ctx = base64.b64decode(header["ctx"])
        key = derive_key(session_key, ctx)
        return AESGCM(key).decrypt(
            unb64url(parts[2]), unb64url(parts[3]) + unb64url(parts[4]), parts[0].encode("ascii")
        )
    except Exception as e:  # any failure here is "cannot decrypt"
        raise PrtCryptoError(f"cannot decrypt the reply with the session key: {e}") from e
