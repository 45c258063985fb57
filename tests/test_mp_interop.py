"""Interoperability: an independent client written only from docs/protocol-notes.md, ConfigMgr §2's byte layout, the way
   sccmwtf/SCCMSecrets are written (httpx + cryptography, hand-built bytes; it does NOT import the
   project's codec): registration, confirmation, policy assignment, secret policy download, CMS
   decryption and NAA blob deobfuscation.

impacket's ntlmrelayx `--sccm-policies`, run unmodified, is tests/test_mp_ntlmrelayx.py.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from datetime import UTC, datetime, timedelta

import httpx
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.x509.oid import NameOID

from cmglab.runtime.lab import Lab
from tests.support.lab import lab_client, lab_fixture

B = "aAbBcCdDv1234567890VxXyYzZ"


mp = lab_fixture("management-point")


# -- the independent client ------------------------------------------------------------------------


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sccm_sign(key: rsa.RSAPrivateKey, data: bytes) -> str:
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())[::-1].hex().upper()


def make_cert(key: rsa.RSAPrivateKey) -> x509.Certificate:
    """Self-signed with the SMS EKUs, built with plain cryptography as the tools do (not the project's PKI
    builders: a bug in their EKU or key usage must not be shared by both sides of this test)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ConfigMgr Client")])
    t = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - timedelta(days=2))
        .not_valid_after(t + timedelta(days=365))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                key_agreement=False,
                content_commitment=False,
                data_encipherment=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(  # SMS signing, SMS
                [x509.ObjectIdentifier("1.3.6.1.4.1.311.101.2"), x509.ObjectIdentifier("1.3.6.1.4.1.311.101")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def envelope(header_xml: str, payload: bytes) -> bytes:
    return (
        f"--{B}\r\ncontent-type: text/plain; charset=UTF-16\r\n\r\n".encode()
        + header_xml.encode("utf-16")  # with BOM
        + f"\r\n--{B}\r\ncontent-type: application/octet-stream\r\n\r\n".encode()
        + payload
        + f"\r\n--{B}--".encode()
    )


def header(endpoint: str, length: int, mp_host: str, extra_hooks: str = "", source_id: str = "") -> str:
    src = f"<SourceID>{source_id}</SourceID>" if source_id else ""
    return (
        f'<Msg ReplyCompression="zlib" SchemaVersion="1.1"><Body Type="ByteRange" Length="{length}" Offset="0" />'
        f"<CorrelationID>{{00000000-0000-0000-0000-000000000000}}</CorrelationID><Hooks>{extra_hooks}"
        f'<Hook3 Name="zlib-compress" /></Hooks><ID>{{5DD100CD-DF1D-45F5-BA17-A327F43465F8}}</ID>'
        f'<Payload Type="inline" /><Priority>0</Priority><Protocol>http</Protocol><ReplyMode>Sync</ReplyMode>'
        f"<ReplyTo>direct:IOP01:SccmMessaging</ReplyTo><SentTime>{now()}</SentTime>{src}"
        f"<SourceHost>IOP01</SourceHost><TargetAddress>mp:{endpoint}</TargetAddress>"
        f"<TargetEndpoint>{endpoint}</TargetEndpoint><TargetHost>{mp_host}</TargetHost>"
        f"<Timeout>60000</Timeout></Msg>"
    )


def read_reply(resp: httpx.Response) -> str:
    """As sccmwtf does: the application/octet-stream part, zlib, UTF-16. Only the CRLF before the next delimiter
    is cut: a compressed body may itself end in 0x0d or 0x0a (its Adler-32's last byte), which rstrip would eat."""
    for part in resp.content.split(f"--{B}".encode()):
        head, _, content = part.partition(b"\r\n\r\n")
        if b"application/octet-stream" in head:
            return zlib.decompress(content.removesuffix(b"\r\n")).decode("utf-16")
    raise AssertionError(f"no octet-stream part in {resp.content[:200]!r}")


def der_items(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(tag, content, full TLV) of the DER elements in `data`."""
    out, i = [], 0
    while i < len(data):
        tag, n = data[i], data[i + 1]
        j = i + 2
        if n & 0x80:
            size = int.from_bytes(data[j : j + (n & 0x7F)], "big")
            j += n & 0x7F
        else:
            size = n
        out.append((tag, data[j : j + size], data[i : j + size]))
        i = j + size
    return out


def cms_decrypt(der: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """ContentInfo → [0] EnvelopedData → KTRI (PKCS#1 v1.5) + des-ede3-cbc content."""
    ((_, content_info, _),) = der_items(der)
    oid, explicit = der_items(content_info)
    assert oid[1] == bytes.fromhex("2a864886f70d010703")  # envelopedData
    ((_, enveloped, _),) = der_items(explicit[1])
    _version, recipients, eci = der_items(enveloped)[:3]
    ((_, ktri, _),) = der_items(recipients[1])
    _v, _ias, alg, wrapped = der_items(ktri)
    assert der_items(alg[1])[0][1] == bytes.fromhex("2a864886f70d010101")  # rsaEncryption
    cek = key.decrypt(wrapped[1], padding.PKCS1v15())
    _ctype, calg, encrypted = der_items(eci[1])
    alg_oid, iv = der_items(calg[1])
    assert alg_oid[1] == bytes.fromhex("2a864886f70d0307")  # des-ede3-cbc
    dec = Cipher(TripleDES(cek), modes.CBC(iv[1])).decryptor()
    plain = dec.update(encrypted[1]) + dec.finalize()
    unpadder = sym_padding.PKCS7(64).unpadder()
    return unpadder.update(plain) + unpadder.finalize()


def deobfuscate(blob_hex: str) -> str:
    """docs/protocol-notes.md, ConfigMgr §1.4: key material [4:44], length [52:56], data [64:], CALG at hex
    [112:116]."""
    blob = bytes.fromhex(blob_hex)
    assert blob[:2] == b"\x89\x13" and blob_hex[112:116] == "0366"
    h = hashlib.sha1(blob[4:44]).digest()
    b1 = bytes(x ^ 0x36 for x in h) + b"\x36" * 44
    b2 = bytes(x ^ 0x5C for x in h) + b"\x5c" * 44
    key = hashlib.sha1(b1).digest() + hashlib.sha1(b2).digest()[:4]
    length = int.from_bytes(blob[52:56], "little")
    dec = Cipher(TripleDES(key), modes.CBC(b"\x00" * 8)).decryptor()
    plain = dec.update(blob[64 : 64 + length]) + dec.finalize()
    unpadder = sym_padding.PKCS7(64).unpadder()
    return (unpadder.update(plain) + unpadder.finalize()).decode("utf-16-le")


def test_independent_client(mp: Lab) -> None:
    base = f"http://{mp.config.hosts.management_point}:{mp.config.ports.management_point_http}"
    mp_host = mp.config.hosts.management_point
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_hex = make_cert(key).public_bytes(serialization.Encoding.DER).hex().upper()
    headers = {
        "Connection": "close",
        "User-Agent": "ConfigMgr Messaging HTTP Sender",
        "Content-Type": f'multipart/mixed; boundary="{B}"',
    }
    http = lab_client(mp)
    with http as c:
        r = c.post(
            f"{mp.url('management-point')}/_lab/site",
            json={"auto_approve": "all"},
            headers={"Authorization": f"Bearer {mp.admin_token()}"},
        )
        assert r.status_code == 200
        try:
            # 1. registration (§2.6)
            data = (
                f'<Data HashAlgorithm="1.2.840.113549.1.1.11" SMSID="" RequestType="Registration" '
                f'TimeStamp="{now()}"><AgentInformation AgentIdentity="CCMSetup.exe" AgentVersion="5.00.8325.0000"'
                f' AgentType="0" /><Certificates><Encryption Encoding="HexBinary" KeyType="1">{cert_hex}'
                f'</Encryption><Signing Encoding="HexBinary" KeyType="1">{cert_hex}</Signing></Certificates>'
                f'<DiscoveryProperties><Property Name="Netbios Name" Value="IOP01" /><Property Name="FQ Name" '
                f'Value="IOP01.lab.local" /><Property Name="Locale ID" Value="1033" /><Property '
                f'Name="InternetFlag" Value="0" /></DiscoveryProperties></Data>'
            )
            sig = sccm_sign(key, data.encode("utf-16-le"))
            body = (
                (
                    f"<ClientRegistrationRequest>{data}<Signature><SignatureValue>{sig}</SignatureValue></Signature>"
                    f"</ClientRegistrationRequest>"
                ).encode("utf-16-le")
                + b"\x00\x00"
                + b"\r\n"
            )
            raw = envelope(header("MP_ClientRegistration", len(body) - 2, mp_host), zlib.compress(body))
            reply = read_reply(c.request("CCM_POST", f"{base}/ccm_system/request", content=raw, headers=headers))
            assert reply.endswith("\x00")
            sms_id = re.search(r'SMSID="GUID:([^"]+)"', reply).group(1)  # type: ignore[union-attr]
            assert 'Status="0"' in reply

            # 2. confirmation
            cdata = (
                f'<Data HashAlgorithm="1.2.840.113549.1.1.11" SMSID="GUID:{sms_id}" RequestType="Confirmation" '
                f'TimeStamp="{now()}">\n<AgentInformation AgentIdentity="CCMSetup.exe" '
                f'AgentVersion="5.00.8325.0000" AgentType="0" /></Data>'
            )
            csig = sccm_sign(key, cdata.encode("utf-16-le"))
            cbody = (
                f'<ClientRegistrationRequest>{cdata}\n<Signature SMSID="GUID:{sms_id}"><SignatureValue>{csig}'
                f"</SignatureValue></Signature></ClientRegistrationRequest>"
            ).encode("utf-16-le") + b"\x00\x00\r\n"
            raw = envelope(header("MP_ClientRegistration", len(cbody) - 2, mp_host), zlib.compress(cbody))
            creply = read_reply(c.request("CCM_POST", f"{base}/ccm_system/request", content=raw, headers=headers))
            assert 'ResponseType="Confirmation"' in creply and 'Status="0"' in creply and sms_id in creply

            # 3. policy assignments, signed (§2.4/§2.5)
            req = (
                f'<RequestAssignments SchemaVersion="1.00" ACK="false" RequestType="Always"><Identification>'
                f"<Machine><ClientID>GUID:{sms_id}</ClientID><FQDN>IOP01.lab.local</FQDN><NetBIOSName>IOP01"
                f"</NetBIOSName><SID /></Machine><User /></Identification><PolicySource>SMS:PRI</PolicySource>"
                f'<Resource ResourceType="Machine" /><ServerCookie /></RequestAssignments>'
            )
            plain = req.encode("utf-16-le") + b"\x00\x00\r\n"
            compressed = zlib.compress(plain)
            n = key.public_key().public_numbers().n
            blob = (
                (b"\x06\x02\x00\x00\x00\xa4\x00\x00RSA1\x00\x08\x00\x00\x01\x00\x01\x00" + n.to_bytes(256, "little"))
                .hex()
                .upper()
            )
            id_sig = sccm_sign(key, f"GUID:{sms_id.upper()}".encode("utf-16-le") + bytes(2))
            hook = (
                f'<Hook2 Name="clientauth"><Property Name="AuthSenderMachine">IOP01</Property>'
                f'<Property Name="PublicKey">{blob}</Property><Property Name="ClientIDSignature">'
                f"{id_sig}</Property>"
                f'<Property Name="PayloadSignature">{sccm_sign(key, compressed)}</Property>'
                f'<Property Name="ClientCapabilities">NonSSL</Property>'
                f'<Property Name="HashAlgorithm">1.2.840.113549.1.1.11</Property></Hook2>'
            )
            raw = envelope(header("MP_PolicyManager", len(plain) - 2, mp_host, hook, f"GUID:{sms_id}"), compressed)
            policies = read_reply(c.request("CCM_POST", f"{base}/ccm_system/request", content=raw, headers=headers))
            path = re.search(r'PolicyCategory="NAAConfig".*?<!\[CDATA\[https*://<mp>([^]]+)', policies).group(1)  # type: ignore[union-attr]

            # 4. secret policy: HTML without auth, CMS with ClientToken headers
            assert c.get(base + path).text.startswith("<HTML>")
            token = f"GUID:{sms_id};{now()};2"
            secret = c.get(
                base + path,
                headers={
                    "ClientToken": token,
                    "ClientTokenSignature": sccm_sign(key, token.encode("utf-16-le") + b"\x00\x00"),
                },
            )
            xml = cms_decrypt(secret.content, key).decode("utf-16-le")[:-1]
        finally:
            c.post(
                f"{mp.url('management-point')}/_lab/site",
                json={"auto_approve": mp.config.site.auto_approve},
                headers={"Authorization": f"Bearer {mp.admin_token()}"},
            )
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    found = {p.get("name"): p[0].text for p in root.findall('.//*[@secret="1"]')}
    naa = mp.config.site.network_access_account
    assert deobfuscate(found["NetworkAccessUsername"] or "") == naa.username
    assert deobfuscate(found["NetworkAccessPassword"] or "") == naa.password
