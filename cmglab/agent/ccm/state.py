"""What the installed client knows (client.json) and where it talks to its management point."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from cmglab.agent.certstore import SMS, SMS_EKU, SMS_ENCRYPTION, SMS_SIGNING, SMS_SIGNING_EKU, StoredCert
from cmglab.agent.device import Device
from cmglab.agent.keys import new_key
from cmglab.agent.network import DeviceNetwork
from cmglab.pki.builders import name as x509_name
from cmglab.pki.builders import self_signed
from cmglab.wire.kinds import RegistrationKind

MUTUAL_AUTH = "CCM_Proxy_MutualAuth"
SERVER_AUTH = "CCM_Proxy_ServerAuth"
CAPABILITIES = '<Capabilities SchemaVersion ="1.0"><Property Name="SSL" Version="1" /></Capabilities>'

# auth modes of the installed client
AAD, BULK, TOKEN, PKI = RegistrationKind.AAD, RegistrationKind.BULK, RegistrationKind.TOKEN, RegistrationKind.PKI
DOMAIN, SELF_SIGNED = RegistrationKind.DOMAIN, RegistrationKind.SELF_SIGNED


@dataclass
class ManagementPoint:
    """An MP as the client addresses it: through a CMG (`host[:port]/CCM_Proxy_MutualAuth/<roleId>`)
    or directly (`https://mp` / `http://mp`)."""

    base: str  # scheme://host[:port]
    role_id: str | None = None  # set: a CMG
    pki: bool = False  # a PKI client goes through CCM_Proxy_MutualAuth, token clients ServerAuth

    @classmethod
    def from_ccmhostname(cls, value: str, *, pki: bool = False) -> ManagementPoint:
        host, _, rest = value.strip().strip("/").partition("/")
        parts = [p for p in rest.split("/") if p]
        if len(parts) != 2 or not parts[0].lower().startswith("ccm_proxy_") or not parts[1].isdigit():
            raise ValueError(f"CCMHOSTNAME {value!r} is not <cmg>/CCM_Proxy_MutualAuth/<roleId>")
        return cls(f"https://{host}", parts[1], pki)

    @classmethod
    def from_url(cls, url: str, *, pki: bool = False) -> ManagementPoint:
        parts = urlsplit(url)
        segs = [p for p in parts.path.split("/") if p]
        if len(segs) >= 2 and segs[0].lower().startswith("ccm_proxy_") and segs[1].isdigit():
            return cls(f"{parts.scheme}://{parts.netloc}", segs[1], pki)
        return cls(f"{parts.scheme}://{parts.netloc}", None, pki)

    @property
    def internet(self) -> bool:
        return self.role_id is not None

    @property
    def scheme(self) -> str:
        return urlsplit(self.base).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.base).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.base).port or (443 if self.scheme == "https" else 80)

    @property
    def netloc(self) -> str:
        return urlsplit(self.base).netloc

    @property
    def name(self) -> str:
        """How the client lists it: `cmg/CCM_Proxy_MutualAuth/<id>`, or the MP's host."""
        return f"{self.netloc}/{MUTUAL_AUTH}/{self.role_id}" if self.internet else self.netloc

    @property
    def display_url(self) -> str:
        return f"https://{self.name}" if self.internet else self.base

    def path(self, rest: str, *, family: str | None = None) -> str:
        rest = rest.lstrip("/")
        if not self.internet:
            return f"/{rest}"
        prefix = family or (MUTUAL_AUTH if self.pki else SERVER_AUTH)
        return f"/{prefix}/{self.role_id}/{rest}"

    def url(self, rest: str, *, family: str | None = None) -> str:
        return self.base + self.path(rest, family=family)

    @property
    def token_auth(self) -> bool:
        """Messages carry a CCM token (ccm_system_tokenauth) unless a PKI certificate or plain HTTP."""
        return self.internet and not self.pki

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClientState:
    installed: bool = False
    version: str = ""
    product_code: str = ""
    site_code: str = ""
    sms_id: str | None = None
    approval: int | None = None
    auth_mode: str = ""
    internet_mps: list[dict[str, Any]] = field(default_factory=list)
    intranet_mp: dict[str, Any] | None = None
    crl_check: bool = True  # in effect: the site's setting (SiteInfoReply) unless ccmsetup /nocrlcheck
    nocrlcheck: bool = False  # ccmsetup /nocrlcheck: overrides the site's setting
    pki_thumbprint: str | None = None
    registered_at: str | None = None
    client_token_issued: str | None = None
    installed_at: str | None = None
    last_policy: str | None = None
    aad: dict[str, str] | None = None  # AADTENANTID / AADCLIENTAPPID / AADRESOURCEURI in use
    allow_cmg: bool = True  # client settings policy: "Allow clients to use a cloud management gateway"

    def follow_site_crl_setting(self, site_checks_crl: bool | None, log: logging.Logger) -> bool:
        """The site's "Clients check the CRL for site systems" from its site information; /nocrlcheck wins.
        True when the client's revocation checking changed."""
        if site_checks_crl is None:
            return False
        changed = False
        wanted = site_checks_crl and not self.nocrlcheck
        if wanted != self.crl_check:
            how = "on" if wanted else "off" if site_checks_crl is False else "off (ccmsetup /nocrlcheck)"
            log.info(f"Site setting 'Clients check the CRL for site systems' applied: revocation checking is {how}")
            changed = True
        self.crl_check = wanted
        return changed

    @classmethod
    def load(cls, device: Device) -> ClientState | None:
        data = device.read_json(device.client_path)
        if data is None:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, device: Device) -> None:
        device.write_json(device.client_path, asdict(self))

    def management_points(self) -> list[ManagementPoint]:
        out = []
        if self.intranet_mp:
            out.append(ManagementPoint(**self.intranet_mp))
        out += [ManagementPoint(**m) for m in self.internet_mps]
        return out


def sms_certificates(device: Device) -> tuple[StoredCert, StoredCert]:
    """The client's self-signed SMS Signing and SMS Encryption certificates, made once per device."""
    signing = device.stores.sms_cert(SMS_SIGNING)
    if signing is None:
        key = new_key()
        cert = self_signed(key, x509_name("SMS"), ekus=[SMS_SIGNING_EKU, SMS_EKU])
        signing = device.stores.add(SMS, cert, key, SMS_SIGNING)
    encryption = device.stores.sms_cert(SMS_ENCRYPTION)
    if encryption is None:
        key = new_key()
        cert = self_signed(key, x509_name("SMS"), ekus=[SMS_EKU], data_encipherment=True)
        encryption = device.stores.add(SMS, cert, key, SMS_ENCRYPTION)
    return signing, encryption


class Connections:
    """The device's HTTP clients, one per client certificate, kept for the process."""

    def __init__(self, network: DeviceNetwork) -> None:
        self.network = network
        self._clients: dict[str, httpx.Client] = {}

    def get(self, cert: StoredCert | None = None) -> httpx.Client:
        key = cert.thumbprint if cert else ""
        if key not in self._clients:
            self._clients[key] = self.network.client(client_cert=cert)
        return self._clients[key]

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()
