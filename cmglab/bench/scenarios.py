"""The requests the benchmarks send, built once (crypto off the measured path) and replayed.

Each scenario is a named target plus one request; the load generator repeats it.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlencode

from cmglab.bench.loadgen import Request, Target
from services.runtime import ccm_messaging as cm
from services.runtime import httpclient, site_tokens
from services.runtime.lab import Lab
from services.runtime.labconfig import CONFIGMGR_CLIENT_APP_ID, CONFIGMGR_RESOURCE_URI

SITE_INFO = '<SiteInformationRequest SchemaVersion="1.00"><SiteCode Name="{code}"/></SiteInformationRequest>'


@dataclass
class Scenario:
    name: str
    target: Target
    request: Request


def _ctx(lab: Lab, client_cert: bool) -> ssl.SSLContext:
    cert = lab.pki.client("bench-client") if client_cert else None
    if cert is not None and not cert.exists():
        lab.pki.issue_client("bench-client")
    return httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle,
                                  client_cert=(cert.cert_path, cert.key_path) if cert else None)


def _target(lab: Lab, service: str, client_cert: bool = False) -> Target:
    return Target(lab.config.bind_address, lab.port(service), lab.host(service), _ctx(lab, client_cert))


def entra_token(lab: Lab) -> Scenario:
    tenant = lab.config.primary_tenant
    user = tenant.users[0]
    body = urlencode({"grant_type": "password", "client_id": CONFIGMGR_CLIENT_APP_ID,
                      "resource": CONFIGMGR_RESOURCE_URI, "username": user.upn, "password": user.password})
    return Scenario("Entra token (ROPC, v1)", _target(lab, "entra"),
                    Request("POST", f"/{tenant.tenant_id}/oauth2/token",
                            {"Content-Type": "application/x-www-form-urlencoded"}, body.encode()))


def sts_request(path: str = "/CCM_STS") -> Request:
    return Request("POST", path, {"Content-Type": "application/json"},
                   json.dumps({"ProofType": "Certificate"}).encode())


def location_request(lab: Lab, path: str = "/ccm_system_tokenauth/request") -> Request:
    token, _ = lab.site_signer().ccm_token(token_type=site_tokens.DEVICE)
    header = cm.MsgHeader(target_endpoint="MP_LocationManager", target_address="mp:[http]MP_LocationManager",
                          target_host=lab.config.hosts.management_point, source_host="BENCH01",
                          reply_to="direct:BENCH01:LS_ReplyLocations")
    raw = cm.encode_request(header, SITE_INFO.format(code=lab.config.site.code))
    return Request("CCM_POST", path, {"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT,
                                      "Authorization": f"Bearer {token}"}, raw)


def mp_direct(lab: Lab) -> list[Scenario]:
    return [
        Scenario("MP CCM_STS (Certificate proof)", _target(lab, "management-point", client_cert=True), sts_request()),
        Scenario("MP location request (ccm_system_tokenauth)", _target(lab, "management-point"),
                 location_request(lab)),
    ]


def through_cmg(lab: Lab) -> list[Scenario]:
    role = lab.config.site.role_id
    return [
        Scenario("CMG -> CP -> MP CCM_STS (MutualAuth)", _target(lab, "cmg", client_cert=True),
                 sts_request(f"/CCM_Proxy_MutualAuth/{role}/CCM_STS")),
        Scenario("CMG -> CP -> MP location request (ServerAuth)", _target(lab, "cmg"),
                 location_request(lab, f"/CCM_Proxy_ServerAuth/{role}/ccm_system_tokenauth/request")),
    ]
