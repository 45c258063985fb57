"""Decrypt a CMS EnvelopedData (RFC 5652) addressed to the client's SMS Encryption certificate: how
secret policies arrive. Key transport rsaEncryption (PKCS#1 v1.5) or RSAES-OAEP (SHA-1); content
des-ede3-cbc or aes256-cbc/aes128-cbc. A minimal DER reader: nothing else is needed."""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OID_ENVELOPED = "1.2.840.113549.1.7.3"
OID_RSA = "1.2.840.113549.1.1.1"
OID_OAEP = "1.2.840.113549.1.1.7"
OID_3DES = "1.2.840.113549.3.7"
OID_AES256 = "2.16.840.1.101.3.4.1.42"
OID_AES128 = "2.16.840.1.101.3.4.1.2"


class CMSError(Exception):
    pass


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at `pos`."""
    if pos + 2 > len(data):
        raise CMSError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise CMSError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise CMSError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out, pos = [], start
    while pos < end:
        tag, s, e = _tlv(data, pos)
        out.append((tag, s, e))
        pos = e
    return out


def _oid(raw: bytes) -> str:
    parts = [raw[0] // 40, raw[0] % 40]
    value = 0
    for b in raw[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def decrypt_enveloped(der: bytes, key: rsa.RSAPrivateKey) -> bytes:
    _, s, e = _tlv(der, 0)
    info = _children(der, s, e)
    if len(info) < 2 or _oid(der[info[0][1] : info[0][2]]) != OID_ENVELOPED:
        raise CMSError("not a CMS EnvelopedData")
    _, s, e = _tlv(der, info[1][1])  # [0] EXPLICIT -> EnvelopedData SEQUENCE
    fields = _children(der, s, e)
    idx = 1  # after version
    if fields[idx][0] == 0xA0:  # originatorInfo
        idx += 1
    recipients = _children(der, fields[idx][1], fields[idx][2])
    enc_info = _children(der, fields[idx + 1][1], fields[idx + 1][2])
    # first KeyTransRecipientInfo that our key opens
    cek = None
    for _, rs, re_ in recipients:
        parts = _children(der, rs, re_)
        alg = _children(der, parts[2][1], parts[2][2])
        alg_oid = _oid(der[alg[0][1] : alg[0][2]])
        encrypted_key = der[parts[3][1] : parts[3][2]]
        pad = (
            padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
            if alg_oid == OID_OAEP
            else padding.PKCS1v15()
        )
        try:
            cek = key.decrypt(encrypted_key, pad)
            break
        except ValueError:
            continue
    if cek is None:
        raise CMSError("no recipient of this EnvelopedData matches the key")
    alg = _children(der, enc_info[1][1], enc_info[1][2])
    content_oid = _oid(der[alg[0][1] : alg[0][2]])
    iv = der[alg[1][1] : alg[1][2]]
    tag, cs, ce = enc_info[2]
    # constructed [0]: OCTET STRING chunks
    content = b"".join(der[s2:e2] for _, s2, e2 in _children(der, cs, ce)) if tag == 0xA0 else der[cs:ce]
    if content_oid == OID_3DES:
        cipher, block = Cipher(TripleDES(cek), modes.CBC(iv)), 64
    elif content_oid in (OID_AES256, OID_AES128):
        cipher, block = Cipher(algorithms.AES(cek), modes.CBC(iv)), 128
    else:
        raise CMSError(f"unsupported content encryption {content_oid}")
    dec = cipher.decryptor()
    plain = dec.update(content) + dec.finalize()
    unpadder = sym_padding.PKCS7(block).unpadder()
    return unpadder.update(plain) + unpadder.finalize()
