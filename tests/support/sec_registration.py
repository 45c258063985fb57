"""Registration as an attacker would send it (issue 15): a device identity of its own (SMS key and
self-signed certificate) that proposes any SMSID, over each of the MP's registration doors."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import spnego
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.pki import builders as b
from cmglab.runtime.certinfo import thumbprint
from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from tests.support.sec_attacks import client


def _sms_cert(key: rsa.RSAPrivateKey) -> x509.Certificate:
    return b.self_signed(key, b.name("ConfigMgr Client"), ekus=[b.SMS_SIGNING_EKU, b.SMS_EKU], data_encipherment=True)


@dataclass
class Box:
    """One machine: its SMS signing key and certificate, its name."""

    name: str
    key: rsa.RSAPrivateKey = field(default_factory=b.new_key)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.cert = _sms_cert(self.key)

    @property
    def thumbprint(self) -> str:
        return thumbprint(self.cert)

    def _data(self, sms_id: str, request_type: str = "Registration") -> str:
        cert = cm.cert_hex(self.cert)
        return (
            f'<Data HashAlgorithm="1.2.840.113549.1.1.11" SMSID="{sms_id}" RequestType="{request_type}" '
            f'TimeStamp="{cm.utc_timestamp()}"><AgentInformation AgentIdentity="CcmExec.exe" '
            f'AgentVersion="5.00.8968.1000" AgentType="0" /><Certificates><Encryption Encoding="HexBinary" '
            f'KeyType="1">{cert}</Encryption><Signing Encoding="HexBinary" KeyType="1">{cert}</Signing>'
            f'</Certificates><DiscoveryProperties><Property Name="Netbios Name" Value="{self.name}" />'
            f'<Property Name="FQ Name" Value="{self.name}.corp.lab.test" /></DiscoveryProperties></Data>'
        )

    def message(self, sms_id: str = "", request_type: str = "Registration") -> bytes:
        body = cm.registration_request(
            self._data(sms_id, request_type), self.key, sms_id=sms_id if request_type == "Confirmation" else None
        )
        header = cm.MsgHeader(
            target_endpoint="MP_ClientRegistration",
            target_host="mp.corp.lab.test",
            source_host=self.name,
            reply_to=f"direct:{self.name}:SccmMessaging",
        )
        return cm.encode_request(header, body)

    def proof(self, proof_type: str, token: str, sms_id: str | None = None) -> dict[str, Any]:
        stamp = cm.utc_timestamp()
        return {
            "ProofType": proof_type,
            "ClientId": sms_id,
            "Certificate": cm.cert_hex(self.cert),
            "Timestamp": stamp,
            "Signature": cm.sign_hex(self.key, cm.utf16(f"{token};{stamp}")),
        }


def mp_https(lab: Lab) -> str:
    return lab.url("management-point")


def mp_http(lab: Lab) -> str:
    return f"http://{lab.config.hosts.management_point}:{lab.config.ports.management_point_http}"


def post_registration(
    lab: Lab,
    box: Box,
    sms_id: str = "",
    *,
    url: str | None = None,
    headers: dict[str, str] | None = None,
    cert: tuple[Path, Path] | None = None,
    request_type: str = "Registration",
) -> dict[str, str]:
    """The ClientRegistrationResponse's attributes."""
    with client(lab, cert=cert) as c:
        reply = c.request(
            "CCM_POST",
            url or f"{mp_http(lab)}/ccm_system/request",
            content=box.message(sms_id, request_type),
            headers={"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT, **(headers or {})},
        )
    assert reply.status_code == 200, (reply.status_code, reply.text[:300])
    _, body = cm.decode_reply(reply.content, reply.headers.get("content-type"))
    return dict(cm.parse_xml(body).attrib)


def via_windowsauth(lab: Lab, box: Box, account: str, password: str, sms_id: str = "") -> dict[str, str]:
    """Registration at `ccm_system_windowsauth` as the domain account `account` (NAME$): a real NTLM
    handshake (pyspnego as the client) on one connection, the registration on its last leg."""
    url = f"{mp_http(lab)}/ccm_system_windowsauth/request"
    headers = {"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT}
    ctx = spnego.client(
        f"{lab.config.active_directory.netbios_name}\\{account}",
        password,
        hostname=lab.config.hosts.management_point,
        service="HTTP",
        protocol="ntlm",
    )
    with client(lab) as c:
        challenge = c.request(
            "CCM_POST",
            url,
            content=b"",
            headers={**headers, "Authorization": f"NTLM {base64.b64encode(ctx.step() or b'').decode()}"},
        )
        assert challenge.status_code == 401, challenge.status_code
        token = ctx.step(base64.b64decode(challenge.headers["www-authenticate"].split(" ", 1)[1])) or b""
        reply = c.request(
            "CCM_POST",
            url,
            content=box.message(sms_id),
            headers={**headers, "Authorization": f"NTLM {base64.b64encode(token).decode()}"},
        )
    assert reply.status_code == 200, (reply.status_code, reply.text[:300])
    _, body = cm.decode_reply(reply.content, reply.headers.get("content-type"))
    return dict(cm.parse_xml(body).attrib)


def ccm_token(lab: Lab, box: Box, proof_type: str, bearer: str, sms_id: str | None = None) -> str:
    """A CCM token from CCM_STS for `box` with the given proof."""
    with client(lab) as c:
        reply = c.post(
            f"{mp_https(lab)}/CCM_STS",
            json=box.proof(proof_type, bearer, sms_id),
            headers={"Authorization": f"Bearer {bearer}"},
        )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["Token"])


def via_tokenauth(lab: Lab, box: Box, token: str, sms_id: str = "") -> dict[str, str]:
    return post_registration(
        lab,
        box,
        sms_id,
        url=f"{mp_https(lab)}/ccm_system_tokenauth/request",
        headers={"Authorization": f"Bearer {token}"},
    )


def site_rows(lab: Lab, what: str) -> list[dict[str, Any]]:
    with client(lab) as c:
        reply = c.get(f"{mp_https(lab)}/_lab/{what}")
        reply.raise_for_status()
        return list(reply.json()[what.replace("-", "_")])


def site_client(lab: Lab, sms_id: str) -> dict[str, Any]:
    return next(r for r in site_rows(lab, "clients") if r["sms_id"] == sms_id)


def set_site(lab: Lab, **settings: Any) -> None:
    with client(lab) as c:
        c.post(
            f"{mp_https(lab)}/_lab/site", json=settings, headers={"Authorization": f"Bearer {lab.admin_token()}"}
        ).raise_for_status()
