"""Secret policy crypto: the obfuscated secret blobs inside policies, and the CMS EnvelopedData that
carries a secret policy to the client's registered encryption certificate.

Obfuscated blob (docs/protocol-notes.md, ConfigMgr §1.4, the layout SCCMSecrets/sccmwtf parse):
    [0:2]   89 13          3DES (8a 13 would be AES-256)
    [4:44]  key material   the 3DES key is CryptDeriveKey(SHA-1(key material), CALG_3DES)
    [52:56] data length    little-endian
    [56:60] 03 66 00 00    ALG_ID CALG_3DES 0x6603 (hex string positions 112..116 read "0366")
    [64:]   data           3DES-CBC, IV zero, PKCS#7 padding, over UTF-16LE(secret)
The result is upper hex, as in the real policy XML.

CMS: ContentInfo(envelopedData) with one KeyTransRecipientInfo (issuerAndSerialNumber of the
encryption certificate, rsaEncryption = PKCS#1 v1.5 by default, or RSAES-OAEP SHA-1) and the content
encrypted with des-ede3-cbc (default) or aes256-cbc; the IV is the OCTET STRING parameter.
"""

from __future__ import annotations

import hashlib
import os

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_DATA = "1.2.840.113549.1.7.1"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
OID_DES_EDE3_CBC = "1.2.840.113549.3.7"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


# -- the obfuscated secret blob ------------------------------------------------------------------


def derive_3des_key(material: bytes) -> bytes:
    """CryptDeriveKey(CALG_3DES) from a SHA-1 hash of `material` (the HMAC-style ipad/opad expansion)."""
    digest = hashlib.sha1(material).digest()
    ipad = bytes(b ^ 0x36 for b in digest.ljust(64, b"\x00"))
    opad = bytes(b ^ 0x5C for b in digest.ljust(64, b"\x00"))
    # bytes beyond the digest are 0x36/0x5c themselves (XOR with zero)
    return hashlib.sha1(ipad).digest() + hashlib.sha1(opad).digest()[:4]


def obfuscate_secret(secret: str, *, material: bytes | None = None) -> str:
    """The `89 13 ...` blob of a secret policy property, upper hex."""
    material = material or os.urandom(40)
    padder = sym_padding.PKCS7(64).padder()
    plain = padder.update(secret.encode("utf-16-le")) + padder.finalize()
    enc = Cipher(TripleDES(derive_3des_key(material)), modes.CBC(b"\x00" * 8)).encryptor()
    data = enc.update(plain) + enc.finalize()
    head = (
        b"\x89\x13\x00\x00"
        + material
        + len(plain).to_bytes(4, "little")
        + b"\x00" * 4
        + len(data).to_bytes(4, "little")
        + b"\x03\x66\x00\x00"
        + b"\x00" * 4
    )
    assert len(head) == 64
    return (head + data).hex().upper()


def deobfuscate_secret(blob_hex: str) -> str:
    blob = bytes.fromhex(blob_hex)
    length = int.from_bytes(blob[52:56], "little")
    dec = Cipher(TripleDES(derive_3des_key(blob[4:44])), modes.CBC(b"\x00" * 8)).decryptor()
    plain = dec.update(blob[64 : 64 + length]) + dec.finalize()
    unpadder = sym_padding.PKCS7(64).unpadder()
    return (unpadder.update(plain) + unpadder.finalize()).decode("utf-16-le")


# -- minimal DER ---------------------------------------------------------------------------------


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _len(len(content)) + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=False)
    return _tlv(0x02, raw)


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _octets(data: bytes) -> bytes:
    return _tlv(0x04, data)


NULL = b"\x05\x00"


def envelope(
    plaintext: bytes, recipient: x509.Certificate, *, cipher: str = "3des", key_transport: str = "pkcs1"
) -> bytes:
    """CMS EnvelopedData (DER) of `plaintext` for `recipient`'s RSA key."""
    public_key = recipient.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("the encryption certificate has no RSA key")
    if cipher == "3des":
        key, iv, alg_oid = os.urandom(24), os.urandom(8), OID_DES_EDE3_CBC
        algo: algorithms.AES | TripleDES = TripleDES(key)
        block = 64
    elif cipher == "aes256":
        key, iv, alg_oid = os.urandom(32), os.urandom(16), OID_AES256_CBC
        algo, block = algorithms.AES(key), 128
    else:
        raise ValueError(f"unknown content cipher {cipher}")
    padder = sym_padding.PKCS7(block).padder()
    enc = Cipher(algo, modes.CBC(iv)).encryptor()
    encrypted = enc.update(padder.update(plaintext) + padder.finalize()) + enc.finalize()
    if key_transport == "pkcs1":
        wrapped = public_key.encrypt(key, padding.PKCS1v15())
        kt_alg = _seq(_oid(OID_RSA_ENCRYPTION), NULL)
    elif key_transport == "oaep":
        wrapped = public_key.encrypt(
            key, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        )
        kt_alg = _seq(_oid(OID_RSAES_OAEP), _seq())
    else:
        raise ValueError(f"unknown key transport {key_transport}")
    issuer_and_serial = _seq(recipient.issuer.public_bytes(), _int(recipient.serial_number))
    ktri = _seq(_int(0), issuer_and_serial, kt_alg, _octets(wrapped))
    eci = _seq(_oid(OID_DATA), _seq(_oid(alg_oid), _octets(iv)), _tlv(0x80, encrypted))
    enveloped = _seq(_int(0), _tlv(0x31, ktri), eci)
    return _seq(_oid(OID_ENVELOPED_DATA), _tlv(0xA0, enveloped))
