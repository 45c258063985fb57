"""The requests the benchmarks send, built once (crypto off the measured path) and replayed.

Each scenario is a named target plus one request; the load generator repeats it.
"""

from __future__ import annotations

import json
import ssl
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.core.labconfig import CONFIGMGR_CLIENT_APP_ID, CONFIGMGR_RESOURCE_URI
from cmglab.pki.builders import SMS_EKU, SMS_SIGNING_EKU, new_key, self_signed
from cmglab.pki.builders import name as x509_name
from cmglab.runtime.certinfo import thumbprint
from cmglab.runtime.lab import Lab
from cmglab.tools.bench.loadgen import Request, Target
from cmglab.wire import ccm_messaging as cm
from cmglab.wire import httpclient, site_tokens
from cmglab.wire.kinds import Proof

# a PKI client's registration (the carrier is the TLS client certificate): the <Data> the agent sends
REGISTRATION = (
    '<Data HashAlgorithm="1.2.840.113549.1.1.11" SMSID="{sms_id}" RequestType="Registration" '
    'TimeStamp="{time}"><AgentInformation AgentIdentity="CcmExec.exe" AgentVersion="5.00.8968.1000" '
    'AgentType="0" /><Certificates><Encryption Encoding="HexBinary" KeyType="1">{cert}</Encryption>'
    '<Signing Encoding="HexBinary" KeyType="1">{cert}</Signing></Certificates><DiscoveryProperties>'
    '<Property Name="Netbios Name" Value="BENCH01" /><Property Name="FQ Name" Value="bench01.lab.test" />'
    '<Property Name="Locale ID" Value="1033" /><Property Name="InternetFlag" Value="0" />'
    "</DiscoveryProperties></Data>"
)
MP_STS = "MP CCM_STS (Certificate proof)"
MP_STS_CLIENT = "MP CCM_STS (ClientToken proof)"
MP_LOCATION = "MP location request (ccm_system_tokenauth)"
MP_REGISTRATION = "MP registration (PKI client)"
MP_POLICY = "MP policy assignments (signed request)"
ASSIGNMENTS = (
    '<RequestAssignments SchemaVersion="1.00" ACK="false" RequestType="Always"><Identification><Machine>'
    "<ClientID>{sms_id}</ClientID><FQDN>bench01.lab.test</FQDN><NetBIOSName>BENCH01</NetBIOSName><SID />"
    "</Machine><User /></Identification><PolicySource>SMS:{code}</PolicySource>"
    '<Resource ResourceType="Machine" /><ServerCookie /></RequestAssignments>'
)
SITE_INFO = '<SiteInformationRequest SchemaVersion="1.00"><SiteCode Name="{code}"/></SiteInformationRequest>'


@dataclass
class Scenario:
    name: str
    target: Target
    request: Request
    direct: str = ""  # through the CMG: the name of the same request sent to the MP directly
    requests: int = 1  # HTTP requests per operation (a nonce first: 2); the floor counts each one's transport
    variants: list[Request] | None = None  # sent in turn instead of `request` (a new device per request)

    def make(self, i: int) -> Request:
        return self.variants[i % len(self.variants)] if self.variants else self.request


def _ctx(lab: Lab, client_cert: bool) -> ssl.SSLContext:
    cert = lab.pki.client("bench-client") if client_cert else None
    if cert is not None and not cert.exists():
        lab.pki.issue_client("bench-client")
    return httpclient.ssl_context(
        ca_bundle=lab.pki.ca_bundle, client_cert=(cert.cert_path, cert.key_path) if cert else None
    )


def service_target(lab: Lab, service: str, client_cert: bool = False) -> Target:
    """A connection to one service of the lab (a PKI client's certificate presented when `client_cert`)."""
    return Target(lab.config.bind_address, lab.port(service), lab.host(service), _ctx(lab, client_cert))


def cmg_mutual_target(lab: Lab) -> Target:
    """A PKI client's connection to the CMG: its certificate presented at TLS."""
    return service_target(lab, "cmg", client_cert=True)


def entra_token(lab: Lab) -> Scenario:
    tenant = lab.config.primary_tenant
    user = tenant.users[0]
    body = urlencode(
        {
            "grant_type": "password",
            "client_id": CONFIGMGR_CLIENT_APP_ID,
            "resource": CONFIGMGR_RESOURCE_URI,
            "username": user.upn,
            "password": user.password,
        }
    )
    return Scenario(
        "Entra token (ROPC, v1)",
        service_target(lab, "entra"),
        Request(
            "POST",
            f"/{tenant.tenant_id}/oauth2/token",
            {"Content-Type": "application/x-www-form-urlencoded"},
            body.encode(),
        ),
    )


def sts_request(path: str = "/CCM_STS") -> Request:
    return Request(
        "POST", path, {"Content-Type": "application/json"}, json.dumps({"ProofType": Proof.CERTIFICATE}).encode()
    )


def location_request(lab: Lab, path: str = "/ccm_system_tokenauth/request") -> Request:
    token, _ = lab.site_signer().ccm_token(token_type=site_tokens.DEVICE)
    header = cm.MsgHeader(
        target_endpoint="MP_LocationManager",
        target_address="mp:[http]MP_LocationManager",
        target_host=lab.config.hosts.management_point,
        source_host="BENCH01",
        reply_to="direct:BENCH01:LS_ReplyLocations",
    )
    raw = cm.encode_request(header, SITE_INFO.format(code=lab.config.site.code))
    return Request(
        "CCM_POST",
        path,
        {"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT, "Authorization": f"Bearer {token}"},
        raw,
    )


@dataclass
class BenchClient:
    """The one client the MP scenarios speak for: its SMS signing key and self-signed certificate. The
    registration scenario registers it (first request, before the measurement); the scenarios after it
    prove possession of its key."""

    sms_id: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def new(cls) -> BenchClient:
        key = new_key()
        return cls(
            "GUID:" + str(uuid.uuid4()).upper(),
            key,
            self_signed(key, x509_name("SMS"), ekus=[SMS_SIGNING_EKU, SMS_EKU]),
        )


def registration_request(lab: Lab, client: BenchClient | None = None) -> Request:
    """One registration, replayed: the MP re-registers the same SMSID each time (a full registration's work:
    signature check, certificates, the client row and its token record in one transaction)."""
    client = client or BenchClient.new()
    key, cert = client.key, client.cert
    data = REGISTRATION.format(sms_id=client.sms_id, time=cm.utc_timestamp(), cert=cm.cert_hex(cert))
    header = cm.MsgHeader(
        target_endpoint="MP_ClientRegistration",
        target_address="mp:[http]MP_ClientRegistration",
        target_host=lab.config.hosts.management_point,
        source_host="BENCH01",
        reply_to="direct:BENCH01:SccmMessaging",
    )
    raw = cm.encode_request(header, cm.registration_request(data, key))
    return Request(
        "CCM_POST", "/ccm_system/request", {"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT}, raw
    )


def client_token_sts_request(lab: Lab, client: BenchClient) -> Request:
    """CCM_STS with a ClientToken proof: the client's unique token (minted with the site's key, as the MP
    issues it at registration) and a signature over token;timestamp with the registered key. Replayable for
    the proof's 15-minute skew."""
    token, _ = lab.site_signer().client_token(sms_id=client.sms_id, cert_thumbprint=thumbprint(client.cert))
    when = cm.utc_timestamp()
    body = {
        "ProofType": Proof.CLIENT_TOKEN,
        "ClientId": client.sms_id,
        "Certificate": cm.cert_hex(client.cert),
        "Timestamp": when,
        "Signature": cm.sign_hex(client.key, cm.utf16(f"{token};{when}")),
    }
    return Request(
        "POST",
        "/CCM_STS",
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        json.dumps(body).encode(),
    )


def policy_request(lab: Lab, client: BenchClient) -> Request:
    """RequestAssignments over tokenauth, signed by the registered client (clientauth hook)."""
    token, _ = lab.site_signer().ccm_token(token_type=site_tokens.DEVICE, sms_id=client.sms_id)
    header = cm.MsgHeader(
        target_endpoint="MP_PolicyManager",
        target_address="mp:[http]MP_PolicyManager",
        target_host=lab.config.hosts.management_point,
        source_host="BENCH01",
        source_id=client.sms_id,
        reply_to="direct:BENCH01:PolicyAgent_ReplyAssignments",
    )
    raw = cm.encode_request(
        header, ASSIGNMENTS.format(sms_id=client.sms_id, code=lab.config.site.code), signer=client.key
    )
    return Request(
        "CCM_POST",
        "/ccm_system_tokenauth/request",
        {"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT, "Authorization": f"Bearer {token}"},
        raw,
    )


def mp_direct(lab: Lab) -> list[Scenario]:
    """The MP's hot endpoints; CCM_STS (Certificate) and location are also measured through the CMG
    (`through_cmg`). The registration comes before the scenarios that need its client registered."""
    client = BenchClient.new()
    return [
        Scenario(MP_STS, service_target(lab, "management-point", client_cert=True), sts_request()),
        Scenario(MP_LOCATION, service_target(lab, "management-point"), location_request(lab)),
        Scenario(
            MP_REGISTRATION,
            service_target(lab, "management-point", client_cert=True),
            registration_request(lab, client),
        ),
        Scenario(MP_STS_CLIENT, service_target(lab, "management-point"), client_token_sts_request(lab, client)),
        Scenario(MP_POLICY, service_target(lab, "management-point"), policy_request(lab, client)),
    ]


def through_cmg(lab: Lab) -> list[Scenario]:
    role = lab.config.site.role_id
    return [
        Scenario(
            "CMG -> CP -> MP CCM_STS (MutualAuth)",
            cmg_mutual_target(lab),
            sts_request(f"/CCM_Proxy_MutualAuth/{role}/CCM_STS"),
            direct=MP_STS,
        ),
        Scenario(
            "CMG -> CP -> MP location request (ServerAuth)",
            service_target(lab, "cmg"),
            location_request(lab, f"/CCM_Proxy_ServerAuth/{role}/ccm_system_tokenauth/request"),
            direct=MP_LOCATION,
        ),
    ]


def aad_auth_info(lab: Lab) -> Request:
    """What ccmsetup asks the CMG first (answered by the CMG itself from the site's published tenants)."""
    return Request(path=f"/CCM_Proxy_ServerAuth/AADAuthInfo?TenantID={lab.config.primary_tenant.tenant_id}")
