"""Discovery documents of the login host and the DRS (docs/protocol-notes.md, Entra §1 and §3.1).

Endpoint URLs are built on the base URL the client used (its Host header), so they are right on the
real names, on the `login.lab.test` alias, with the embedded lab's port and in compose. Issuers are
Entra's exact strings: the tenant GUID, or the `{tenantid}` template for `common`/`organizations`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from cmglab.core.labconfig import DRS_RESOURCE
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.tokens import V1_ISSUER, V2_ISSUER

MULTI_TENANT = ("common", "organizations")
WORLDWIDE_ALIASES = ["login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net"]
_CLOUD = {
    "cloud_instance_name": "microsoftonline.com",
    "cloud_graph_host_name": "graph.windows.net",
    "msgraph_host": "graph.microsoft.com",
    "rbac_url": "https://pas.windows.net",
}
_CLAIMS = [
    "sub",
    "iss",
    "cloud_instance_name",
    "cloud_instance_host_name",
    "cloud_graph_host_name",
    "msgraph_host",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "acr",
]


def openid_v1(base: str, segment: str, region: str | None) -> dict[str, Any]:
    """`segment` is the tenant GUID, or `common`/`organizations` (then the issuer is a template)."""
    issuer_tid = "{tenantid}" if segment in MULTI_TENANT else segment
    t = f"{base}/{segment}"
    return {
        "token_endpoint": f"{t}/oauth2/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/common/discovery/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": V1_ISSUER.format(tid=issuer_tid),
        "microsoft_multi_refresh_token": True,
        "authorization_endpoint": f"{t}/oauth2/authorize",
        "device_authorization_endpoint": f"{t}/oauth2/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{t}/oauth2/logout",
        "claims_supported": [*_CLAIMS, "amr", "nonce", "email", "given_name", "family_name", "nickname"],
        "check_session_iframe": f"{t}/oauth2/checksession",
        "userinfo_endpoint": f"{t}/openid/userinfo",
        "kerberos_endpoint": f"{t}/kerberos",
        "tenant_region_scope": region,
        **_CLOUD,
    }


def openid_v2(base: str, segment: str, region: str | None) -> dict[str, Any]:
    issuer_tid = "{tenantid}" if segment in MULTI_TENANT else segment
    t = f"{base}/{segment}"
    return {
        "token_endpoint": f"{t}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{t}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": V2_ISSUER.format(tid=issuer_tid),
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{t}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{t}/oauth2/v2.0/logout",
        "claims_supported": [
            *_CLAIMS,
            "nonce",
            "preferred_username",
            "name",
            "tid",
            "ver",
            "at_hash",
            "c_hash",
            "email",
        ],
        "kerberos_endpoint": f"{t}/kerberos",
        "tenant_region_scope": region,
        **_CLOUD,
    }


def instance_metadata(host: str, lab_hosts: list[str]) -> list[dict[str, Any]]:
    """The worldwide cloud's aliases, and the lab's own names (e.g. login.lab.test) as one more cloud."""
    own = [
        h
        for h in lab_hosts
        if h not in WORLDWIDE_ALIASES and not h.startswith("enterpriseregistration.") and not h.startswith("device.")
    ]
    metadata: list[dict[str, Any]] = [
        {
            "preferred_network": "login.microsoftonline.com",
            "preferred_cache": "login.windows.net",
            "aliases": WORLDWIDE_ALIASES,
        }
    ]
    if own:
        preferred = host if host in own else own[0]
        metadata.append({"preferred_network": preferred, "preferred_cache": preferred, "aliases": own})
    return metadata


def instance_discovery(
    base: str, host: str, authorization_endpoint: str, api_version: str, lab_hosts: list[str]
) -> dict[str, Any]:
    """`/common/discovery/instance`: where the authority's tenant discovery document is, and the aliases.
    An authorization endpoint on a host that is not Entra's is an unknown instance."""
    endpoint = urlsplit(authorization_endpoint) if authorization_endpoint else urlsplit(f"{base}/common/")
    if endpoint.hostname not in {*lab_hosts, *WORLDWIDE_ALIASES}:
        raise AADSTSError(50049, "invalid_instance", "Unknown or invalid instance.")
    tenant = endpoint.path.strip("/").split("/")[0] or "common"
    version = "v2.0/" if "/v2.0/" in endpoint.path or not authorization_endpoint else ""
    return {
        "tenant_discovery_endpoint": f"{base}/{tenant}/{version}.well-known/openid-configuration",
        "api-version": api_version,
        "metadata": instance_metadata(host, lab_hosts),
    }


def userrealm_v1(upn: str, domain: str | None, federated: bool, sts: str | None = None) -> dict[str, Any]:
    """`sts`: the federation service's trust URL (https://sts.<domain>[:port]/adfs/services/trust)."""
    base = {
        "ver": "1.0",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_audience_urn": "urn:federation:MicrosoftOnline",
    }
    if domain is None:
        return {"ver": "1.0", "account_type": "Unknown", "cloud_instance_name": "microsoftonline.com"}
    if not federated:
        return {**base, "account_type": "Managed", "domain_name": domain}
    sts = sts or f"https://sts.{domain}/adfs/services/trust"
    return {
        **base,
        "account_type": "Federated",
        "domain_name": domain,
        "federation_protocol": "WSTrust",
        "federation_metadata_url": f"{sts}/mex",
        "federation_active_auth_url": f"{sts}/13/usernamemixed",
    }


def userrealm_v2(upn: str, domain: str | None, federated: bool, brand: str | None) -> dict[str, Any]:
    if domain is None:
        return {
            "NameSpaceType": "Unknown",
            "Login": upn,
            "DomainName": upn.rpartition("@")[2],
            "cloud_instance_name": "microsoftonline.com",
        }
    out: dict[str, Any] = {
        "NameSpaceType": "Federated" if federated else "Managed",
        "Login": upn,
        "DomainName": domain,
        "FederationBrandName": brand,
        "TenantBrandingInfo": None,
        "cloud_instance_name": "microsoftonline.com",
    }
    if federated:
        out.update(
            federation_protocol="WSTrust",
            AuthURL=f"https://sts.{domain}/adfs/ls/?username={upn}&wa=wsignin1.0"
            "&wtrealm=urn%3afederation%3aMicrosoftOnline&wctx=",
        )
    return out


def drs_discovery(
    drs: str, login: str, tenant_id: str, tenant_name: str, domain: str, federated: bool
) -> dict[str, Any]:
    """`drs` and `login` are the base URLs of the DRS and login host names."""

    def service(endpoint_key: str, url: str, version: str = "1.0", resource_key: str = "ResourceId") -> dict[str, str]:
        return {endpoint_key: url, resource_key: DRS_RESOURCE, "ServiceVersion": version}

    es = f"{drs}/EnrollmentServer"
    return {
        "DiscoveryService": {"DiscoveryEndpoint": f"{drs}/{tenant_id}/Discover", "ServiceVersion": "1.9"},
        "DeviceRegistrationService": service(
            "RegistrationEndpoint", f"{es}/DeviceEnrollmentWebService.svc", resource_key="RegistrationResourceId"
        ),
        "AuthenticationService": {
            "OAuth2": {
                "AuthCodeEndpoint": f"{login}/{tenant_id}/oauth2/authorize",
                "TokenEndpoint": f"{login}/{tenant_id}/oauth2/token",
            }
        },
        "IdentityProviderService": {"Federated": federated, "PassiveAuthEndpoint": f"{login}/{tenant_id}/wsfed"},
        "DeviceJoinService": service("JoinEndpoint", f"{es}/device/", "2.0", "JoinResourceId"),
        "KeyProvisioningService": service("KeyProvisionEndpoint", f"{es}/key/", resource_key="KeyProvisionResourceId"),
        "WebAuthNService": service(
            "WebAuthNEndpoint", f"{drs}/webauthn/{tenant_id}/", resource_key="WebAuthNResourceId"
        ),
        "DeviceManagementService": service(
            "DeviceManagementEndpoint", f"{drs}/manage/{tenant_id}/", resource_key="DeviceManagementResourceId"
        ),
        "MsaProviderData": {"SiteId": "", "SiteUrl": drs.removeprefix("https://")},
        "PrecreateService": service(
            "PrecreateEndpoint", f"{es}/device/precreate/{tenant_id}/", "2.0", "PrecreateResourceId"
        ),
        "TenantInfo": {"DisplayName": tenant_name, "TenantId": tenant_id, "TenantName": domain},
        "AzureRbacService": {"RbacPolicyEndpoint": "https://pas.windows.net"},
        "BPLService": {
            "BPLProxyServicePrincipalId": "",
            "BPLResourceId": DRS_RESOURCE,
            "BPLServiceEndpoint": f"{drs}/aadpasswordpolicy/{tenant_id}/",
            "ServiceVersion": "1.0",
        },
        "DeviceJoinResourceService": service("Endpoint", f"{es}/device/resource/{tenant_id}/", "2.0"),
        "NonceService": service("Endpoint", f"{es}/nonce/{tenant_id}/"),
    }
