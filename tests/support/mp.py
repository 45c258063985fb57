"""The MP tests' helpers: a device with its self-signed SMS certificate that builds messages with the shared
codec, URLs, the site's rows and logs, and a CMS decryptor as the Python tools decrypt."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.pki.builders import SMS_EKU, SMS_SIGNING_EKU, name, self_signed
from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from tests.support.lab import lab_client, set_site  # noqa: F401 (set_site: the MP tests' own)


def self_signed_sms_cert(key: rsa.RSAPrivateKey, cn: str = "ConfigMgr Client") -> x509.Certificate:
    """The device's self-signed SMS certificate (signing and encryption), built as the project builds one."""
    return self_signed(key, name(cn), ekus=[SMS_SIGNING_EKU, SMS_EKU], data_encipherment=True)


_KEYS: list[rsa.RSAPrivateKey] = []


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Device:
    name: str = "LAB01"
    domain: str = "corp.lab.test"
    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    sms_id: str | None = None
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.cert = self_signed_sms_cert(self.key)

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.domain}"

    def registration_data(self, *, request_type: str = "Registration", sms_id: str = "") -> str:
        cert = cm.cert_hex(self.cert)
        return (
            f'<Data HashAlgorithm="1.2.840.113549.1.1.11" SMSID="{sms_id}" RequestType="{request_type}" '
            f'TimeStamp="{cm.utc_timestamp()}"><AgentInformation AgentIdentity="CCMSetup.exe" '
            f'AgentVersion="5.00.8968.1000" AgentType="0" /><Certificates><Encryption Encoding="HexBinary" '
            f'KeyType="1">{cert}</Encryption><Signing Encoding="HexBinary" KeyType="1">{cert}</Signing>'
            f'</Certificates><DiscoveryProperties><Property Name="Netbios Name" Value="{self.name}" />'
            f'<Property Name="FQ Name" Value="{self.fqdn}" /><Property Name="Locale ID" Value="1033" />'
            f'<Property Name="InternetFlag" Value="0" /></DiscoveryProperties></Data>'
        )

    def confirmation_data(self) -> str:
        return (
            f'<Data HashAlgorithm="1.2.840.113549.1.1.11" SMSID="{self.sms_id}" RequestType="Confirmation" '
            f'TimeStamp="{cm.utc_timestamp()}"><AgentInformation AgentIdentity="CCMSetup.exe" '
            f'AgentVersion="5.00.8968.1000" AgentType="0" /></Data>'
        )

    def header(self, endpoint: str, target_host: str = "mp.corp.lab.test", **kw: Any) -> cm.MsgHeader:
        return cm.MsgHeader(
            target_endpoint=endpoint,
            target_host=target_host,
            source_host=self.name,
            reply_to=f"direct:{self.name}:SccmMessaging",
            **kw,
        )

    def registration_message(self, *, sms_id: str = "") -> bytes:
        body = cm.registration_request(self.registration_data(sms_id=sms_id), self.key)
        return cm.encode_request(self.header("MP_ClientRegistration"), body)

    def confirmation_message(self) -> bytes:
        body = cm.registration_request(self.confirmation_data(), self.key, sms_id=self.sms_id)
        return cm.encode_request(self.header("MP_ClientRegistration"), body)

    def assignments_body(self) -> str:
        return (
            f'<RequestAssignments SchemaVersion="1.00" ACK="false" RequestType="Always"><Identification>'
            f"<Machine><ClientID>{self.sms_id}</ClientID><FQDN>{self.fqdn}</FQDN><NetBIOSName>{self.name}"
            f"</NetBIOSName><SID /></Machine><User /></Identification><PolicySource>SMS:MEM</PolicySource>"
            f'<Resource ResourceType="Machine" /><ServerCookie /></RequestAssignments>'
        )

    def signed_message(self, endpoint: str, body: str, **kw: Any) -> bytes:
        return cm.encode_request(self.header(endpoint, source_id=self.sms_id, **kw), body, signer=self.key)

    def client_token_headers(self) -> dict[str, str]:
        assert self.sms_id
        return cm.client_token_headers(self.sms_id, self.key)

    def proof(self, proof_type: str, token: str, **extra: Any) -> dict[str, Any]:
        stamp = cm.utc_timestamp()
        return {
            "ProofType": proof_type,
            "ClientId": self.sms_id,
            "Certificate": cm.cert_hex(self.cert),
            "Timestamp": stamp,
            "Signature": cm.sign_hex(self.key, cm.utf16(f"{token};{stamp}")),
            **extra,
        }


def http_url(lab: Lab) -> str:
    return f"http://{lab.config.hosts.management_point}:{lab.config.ports.management_point_http}"


def https_url(lab: Lab) -> str:
    return lab.url("management-point")


def client(lab: Lab, cert: tuple[Path, Path] | None = None) -> httpx.Client:
    return lab_client(lab, cert=cert)


def ccm_post(
    c: httpx.Client, url: str, raw: bytes, headers: dict[str, str] | None = None, content_type: str = cm.CONTENT_TYPE
) -> httpx.Response:
    return c.request(
        "CCM_POST",
        url,
        content=raw,
        headers={"Content-Type": content_type, "User-Agent": cm.USER_AGENT, **(headers or {})},
    )


def reply_body(resp: httpx.Response) -> str:
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    _, body = cm.decode_reply(resp.content, resp.headers.get("content-type"))
    return body


def register(
    lab: Lab,
    device: Device,
    c: httpx.Client | None = None,
    url: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """Register over HTTP /ccm_system/request (or `url`); the response's attributes."""
    own = c is None
    c = c or client(lab)
    try:
        resp = ccm_post(c, url or f"{http_url(lab)}/ccm_system/request", device.registration_message(), headers)
        root = cm.parse_xml(reply_body(resp))
    finally:
        if own:
            c.close()
    attrs = dict(root.attrib)
    if attrs.get("SMSID"):
        device.sms_id = attrs["SMSID"]
    return attrs


def lab_rows(lab: Lab, what: str) -> list[dict[str, Any]]:
    with client(lab) as c:
        r = c.get(f"{https_url(lab)}/_lab/{what}")
        r.raise_for_status()
        data: list[dict[str, Any]] = r.json()[what.replace("-", "_")]
        return data


def log_text(lab: Lab, name: str) -> str:
    path = lab.dir / "logs" / "management-point" / name
    return path.read_text(errors="replace") if path.exists() else ""


def wait_log(lab: Lab, name: str, pattern: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern, re.IGNORECASE)
    while True:
        text = log_text(lab, name)
        m = rx.search(text)
        if m:
            return m.group(0)
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern!r} in {name}:\n{text[-2000:]}")
        time.sleep(0.05)


def cms_decrypt(der: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt a CMS EnvelopedData as the Python tools do (pyasn1-modules rfc5652): rsaEncryption or
    RSAES-OAEP key transport, des-ede3-cbc or aes256-cbc content."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives import padding as sym_padding
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from pyasn1.codec.der.decoder import decode
    from pyasn1_modules import rfc5652

    info, _ = decode(der, asn1Spec=rfc5652.ContentInfo())
    env, _ = decode(info["content"], asn1Spec=rfc5652.EnvelopedData())
    ktri = env["recipientInfos"][0]["ktri"]
    wrapped = ktri["encryptedKey"].asOctets()
    if str(ktri["keyEncryptionAlgorithm"]["algorithm"]) == "1.2.840.113549.1.1.7":
        cek = key.decrypt(wrapped, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    else:
        cek = key.decrypt(wrapped, padding.PKCS1v15())
    eci = env["encryptedContentInfo"]
    iv = eci["contentEncryptionAlgorithm"]["parameters"].asOctets()[2:]
    alg = str(eci["contentEncryptionAlgorithm"]["algorithm"])
    cipher, block = (TripleDES(cek), 64) if alg == "1.2.840.113549.3.7" else (algorithms.AES(cek), 128)
    dec = Cipher(cipher, modes.CBC(iv)).decryptor()
    padded = dec.update(eci["encryptedContent"].asOctets()) + dec.finalize()
    unpadder = sym_padding.PKCS7(block).unpadder()
    return unpadder.update(padded) + unpadder.finalize()
