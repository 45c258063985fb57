"""The lab configuration (`<lab>/lab.json`): every name, ID, account and port the parts agree on.

Generated once by `cmglab init` with the lab's defaults and fresh IDs/passwords, then kept.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_VERSION = 1

# Seed 001 values: the ConfigMgr client app, its resource, the site code and the client build.
CONFIGMGR_CLIENT_APP_ID = "0b7c8ab3-9ea1-4ffa-b2b9-8ffdd944bd8b"
CONFIGMGR_RESOURCE_URI = "https://ConfigMgrService"
DRS_RESOURCE = "urn:ms-drs:enterpriseregistration.windows.net"
DEFAULT_ROLE_ID = 72057594037927939  # 2**56 + 3: real role IDs have this form
# services whose lab listener is plain HTTP: the CRL host, and the connection point's admin listener
PLAIN_HTTP_SERVICES = ("pki", "cmg-connection-point")


def _guid() -> str:
    return str(uuid.uuid4())


def _password() -> str:
    return "Lab-" + secrets.token_urlsafe(9)


def _sid_base() -> str:
    parts = [secrets.randbelow(2**31) for _ in range(3)]
    return "S-1-5-21-" + "-".join(str(p) for p in parts)


class User(BaseModel):
    upn: str
    password: str = Field(default_factory=_password)
    object_id: str = Field(default_factory=_guid)
    display_name: str = ""
    onprem_sid: str | None = None


class Domain(BaseModel):
    name: str
    federated: bool = False


class Tenant(BaseModel):
    tenant_id: str = Field(default_factory=_guid)
    display_name: str
    initial_domain: str
    domains: list[Domain] = []
    users: list[User] = []
    onboarded: bool = True  # onboarded to the ConfigMgr site (cloud services)
    region: str = "NA"
    # Device settings "Maximum number of devices per user": Entra's default 50, at most 100, null = Unlimited
    # (labs made by tests and tools are Unlimited: a fleet joins all its devices as one user)
    max_devices_per_user: int | None = Field(default=50, ge=1, le=100)


class App(BaseModel):
    app_id: str
    display_name: str
    identifier_uri: str | None = None
    client_secret: str | None = None
    public_client: bool = True
    access_token_version: int = 1


class DomainAccount(BaseModel):
    """An on-premises AD account the MP's Windows authentication accepts (`NAME$` for computers)."""

    name: str
    password: str = Field(default_factory=_password)
    sid: str | None = None


class ActiveDirectory(BaseModel):
    netbios_name: str = "CORP"
    dns_name: str = "corp.lab.test"
    domain_sid: str = Field(default_factory=_sid_base)
    accounts: list[DomainAccount] = []


class NetworkAccessAccount(BaseModel):
    username: str = "CORP\\svc-naa"
    password: str = Field(default_factory=_password)


AutoApprove = Literal["all", "domain", "none"]
ConflictingRecords = Literal["automatic", "manual"]
AUTO_APPROVE: tuple[AutoApprove, ...] = ("all", "domain", "none")
CONFLICTING_RECORDS: tuple[ConflictingRecords, ...] = ("automatic", "manual")


class SiteSettings(BaseModel):
    """The site settings a running lab enforces (lab.json's `site` holds them; the MP's store persists and
    returns this model; `cmglab site set`, `POST /_lab/site` and `cmglab info` speak it)."""

    allow_cmg: bool = True  # "Allow Configuration Manager cloud management gateway traffic"
    # client setting (Cloud Services): "Allow clients to use a cloud management gateway", delivered by policy
    client_allow_cmg: bool = True
    auto_approve: AutoApprove = "domain"  # approval of self-signed registrations
    # hierarchy setting "Conflicting client records": automatic (create a new record) | manual (hold it for the
    # admin: `cmglab clients conflicts`, `cmglab clients resolve`)
    conflicting_records: ConflictingRecords = "automatic"
    # Communication Security "Clients check the CRL for site systems": delivered to clients with the site
    # information (SiteInfoReply); ccmsetup's /nocrlcheck still turns it off on one client
    client_crl_check: bool = True
    content_enabled_cmg: bool = True
    ccm_token_lifetime_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)  # CCM_STS tokens: 8 hours
    https_only: bool = False  # Communication Security "HTTPS only": the MP refuses client traffic over HTTP

    @field_validator("auto_approve", "conflicting_records", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def site_settings(self) -> SiteSettings:
        """These settings alone (of a `Site`: without its names and IDs)."""
        return SiteSettings.model_validate(self.model_dump(include=set(SiteSettings.model_fields)))

    def changed(self, changes: dict[str, Any]) -> SiteSettings:
        """These settings with `changes` (field name → value, validated: ValidationError on a bad one)."""
        return SiteSettings.model_validate({**self.site_settings().model_dump(), **changes})


class SiteSettingsChange(BaseModel):
    """A change of some site settings (`POST /_lab/site`): any of SiteSettings' fields (null: not given), each
    validated by SiteSettings itself, so there is one model of the settings (its types, bounds and
    validators: `{"auto_approve": "ALL"}` is `all` here as in lab.json). An unknown name is refused."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _through_site_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a site settings change is an object: setting name -> value")
        given = {name: value for name, value in data.items() if value is not None}
        unknown = sorted(set(given) - set(SiteSettings.model_fields))
        if unknown:
            raise ValueError(f"unknown site settings: {', '.join(unknown)}")
        # the fields not given take SiteSettings' defaults here only to validate the given ones
        return SiteSettings.model_validate(given).model_dump(include=set(given))

    def given(self) -> dict[str, Any]:
        """The settings given, validated (field name -> value)."""
        return dict(self.model_extra or {})


class Site(SiteSettings):
    code: str = "MEM"
    name: str = "cmglab primary site"
    role_id: int = DEFAULT_ROLE_ID
    hierarchy_id: str = Field(default_factory=_guid)
    client_version: str = "5.00.8968.1000"
    client_product_code: str = "{66653948-0717-4D50-B0B9-ED66FDED2DDB}"
    mp_build: int = 8968
    client_package_id: str = "MEM00001"
    network_access_account: NetworkAccessAccount = NetworkAccessAccount()


class DistributionPoint(BaseModel):
    """The DP's properties in the console (Distribution point properties, General tab)."""

    # "Allow clients to connect anonymously": off (the default) asks Windows authentication of every
    # content request (a domain account or the network access account)
    allow_anonymous: bool = False
    # HTTPS instead of HTTP: the content vdirs then require SSL and a PKI client certificate
    # (NOCERT_SMS_DP_SMSPKG$ does not ask for the certificate)
    https: bool = False


# `cmglab site set NAME VALUE`: NAME → the SiteSettings field
SITE_SETTINGS: dict[str, str] = {
    "allow-cmg": "allow_cmg",
    "client-allow-cmg": "client_allow_cmg",
    "auto-approve": "auto_approve",
    "conflicting-records": "conflicting_records",
    "content-enabled-cmg": "content_enabled_cmg",
    "crl-check": "client_crl_check",
    "https-only": "https_only",
    "ccm-token-lifetime": "ccm_token_lifetime_minutes",
}


class Hosts(BaseModel):
    entra: list[str] = [
        "login.microsoftonline.com",
        "enterpriseregistration.windows.net",
        "login.windows.net",
        "login.microsoft.com",
        "device.login.microsoftonline.com",
        "login.lab.test",
        "sts.fed.lab.test",  # the lab's federation service (AD FS stand-in) for fed.lab.test
    ]
    cmg: str = "cmg.lab.test"
    cmg_connection_point: str = "cmgcp.corp.lab.test"
    management_point: str = "mp.corp.lab.test"
    pki: str = "pki.lab.test"
    console: str = "console.lab.test"
    distribution_point: str = "dp.corp.lab.test"
    # compose service names, added to the server certificates
    compose: dict[str, str] = {
        "entra": "entra",
        "cmg": "cmg",
        "management-point": "management-point",
        "cmg-connection-point": "cmg-connection-point",
        "pki": "pki",
        "console": "console",
        "distribution-point": "distribution-point",
    }

    def compose_name(self, service: str) -> str:
        """A service's compose name; a lab.json written before the service existed lacks its entry."""
        return self.compose.get(service, service)


class Ports(BaseModel):
    entra: int = 8443
    cmg: int = 8444
    cmg_connector: int = 10140
    management_point: int = 8445
    management_point_http: int = 8080
    pki: int = 8081
    cmg_connection_point: int = 8446  # its admin listener (plain HTTP, internal network only)
    console: int = 8447  # the lab console (HTTPS)
    distribution_point: int = 8448  # the DP's HTTPS binding
    distribution_point_http: int = 8082  # the DP's HTTP binding


class SmartLockout(BaseModel):
    """Entra smart lockout (Authentication methods > Password protection): after `threshold` wrong passwords
    the account answers AADSTS50053 for `duration_seconds` (Entra's defaults: 10 failures, 60 seconds);
    `cmglab entra unlock UPN` ends it early."""

    threshold: int = Field(default=10, ge=1)
    duration_seconds: int = Field(default=60, ge=1)


class LabConfig(BaseModel):
    version: int = CONFIG_VERSION
    site: Site = Site()
    tenants: list[Tenant]
    apps: list[App]
    active_directory: ActiveDirectory
    hosts: Hosts = Hosts()
    ports: Ports = Ports()
    distribution_point: DistributionPoint = DistributionPoint()
    smart_lockout: SmartLockout = SmartLockout()
    bind_address: str = "127.0.0.1"
    compose: bool = False  # services reach each other by DNS on 443/80 instead of the hosts file

    @property
    def primary_tenant(self) -> Tenant:
        return self.tenants[0]

    def tenant(self, key: str) -> Tenant | None:
        """A tenant by ID or by one of its domain names (case-insensitive)."""
        key = key.lower()
        for t in self.tenants:
            if t.tenant_id == key or any(d.name.lower() == key for d in t.domains):
                return t
        return None

    @property
    def pki_url(self) -> str:
        if self.compose:
            return f"http://{self.hosts.pki}"
        return f"http://{self.hosts.pki}:{self.ports.pki}"

    def service_port(self, service: str) -> int:
        if self.compose:
            return 80 if service in PLAIN_HTTP_SERVICES else 443
        return int(getattr(self.ports, service.replace("-", "_")))


def default_config(*, compose: bool = False) -> LabConfig:
    """A fresh lab: one onboarded tenant with users, one tenant that is not onboarded."""
    ad = ActiveDirectory()
    alice_sid = f"{ad.domain_sid}-1604"
    ad.accounts = [
        DomainAccount(name="alice", sid=alice_sid),
        DomainAccount(name="LAB01$", sid=f"{ad.domain_sid}-1105"),
    ]
    contoso = Tenant(
        display_name="cmglab",
        initial_domain="cmglab.onmicrosoft.com",
        domains=[
            Domain(name="cmglab.onmicrosoft.com"),
            Domain(name="lab.test"),
            Domain(name="fed.lab.test", federated=True),
        ],
        users=[
            User(upn="alice@lab.test", display_name="Alice Lab", onprem_sid=alice_sid),
            User(upn="bob@lab.test", display_name="Bob Lab"),
            User(upn="carol@fed.lab.test", display_name="Carol Federated"),  # signs in at sts.fed.lab.test
        ],
    )
    other = Tenant(
        display_name="fabrikam",
        initial_domain="fabrikam.onmicrosoft.com",
        domains=[Domain(name="fabrikam.onmicrosoft.com")],
        users=[User(upn="eve@fabrikam.onmicrosoft.com", display_name="Eve Fabrikam")],
        onboarded=False,
        region="EU",
    )
    apps = [
        App(app_id=CONFIGMGR_CLIENT_APP_ID, display_name="ConfigMgr client"),
        App(
            app_id=_guid(),
            display_name="ConfigMgr server",
            identifier_uri=CONFIGMGR_RESOURCE_URI,
            client_secret=secrets.token_urlsafe(24),
            public_client=False,
        ),
        App(app_id="1b730954-1685-4b74-9bfd-dac224a7b894", display_name="Azure AD PowerShell"),
        App(app_id="29d9ed98-a469-4536-ade2-f981bc1d605e", display_name="Microsoft Authentication Broker"),
        App(
            app_id="01cb2876-7ebd-4aa4-9cc9-d28bd4d359a9",
            display_name="Device Registration Service",
            identifier_uri=DRS_RESOURCE,
            public_client=False,
        ),
    ]
    return LabConfig(
        tenants=[contoso, other],
        apps=apps,
        active_directory=ad,
        compose=compose,
        bind_address="0.0.0.0" if compose else "127.0.0.1",
    )


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file readable by its owner only (keys, tokens, the config with passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.chmod(path, 0o600)


class LabConfigError(Exception):
    """lab.json exists but this cmglab cannot use it: damaged, half-written, or from another lab version."""


def load_config(path: Path) -> LabConfig:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # a half-written file is not JSON
        raise LabConfigError(f"{path} is damaged (not a lab config: {e})") from e
    version = raw.get("version") if isinstance(raw, dict) else None
    if version != CONFIG_VERSION:
        raise LabConfigError(
            f"{path} belongs to another cmglab version (lab version {version!r}; "
            f"this cmglab reads version {CONFIG_VERSION})"
        )
    try:
        return LabConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise LabConfigError(f"{path} is damaged ({e.error_count()} invalid fields; {where}: {first['msg']})") from e


def save_config(config: LabConfig, path: Path) -> None:
    write_private(path, config.model_dump_json(indent=2) + "\n")
