"""Discovery on the login host (OpenID configurations, JWKS, instance discovery, user realm) and the
DRS (discover, nonce), as real clients read them."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from cryptography import x509

from cmglab.runtime.lab import Lab
from cmglab.wire.entra_tokens import EntraKeys
from tests.support.entra_device import DRS_RESOURCE, EntraClient, entra_session
from tests.support.lab import lab_fixture

entra = lab_fixture("entra", session=entra_session)


def test_openid_configuration_issuers(entra: EntraClient) -> None:
    tid, get = entra.tenant.tenant_id, entra.http.get
    common_v1 = get(f"{entra.login}/common/.well-known/openid-configuration")
    assert common_v1.headers["cache-control"] == "max-age=86400, private"
    assert common_v1.json()["issuer"] == "https://sts.windows.net/{tenantid}/"
    assert common_v1.json()["token_endpoint"] == f"{entra.login}/common/oauth2/token"
    assert common_v1.json()["tenant_region_scope"] is None
    for alias in ("common", "organizations"):
        doc = get(f"{entra.login}/{alias}/v2.0/.well-known/openid-configuration").json()
        assert doc["issuer"] == "https://login.microsoftonline.com/{tenantid}/v2.0"
    by_domain = get(f"{entra.login}/lab.test/v2.0/.well-known/openid-configuration").json()
    assert by_domain["issuer"] == f"https://login.microsoftonline.com/{tid}/v2.0"
    assert by_domain["token_endpoint"] == f"{entra.login}/{tid}/oauth2/v2.0/token"
    assert by_domain["jwks_uri"] == f"{entra.login}/{tid}/discovery/v2.0/keys"
    assert by_domain["tenant_region_scope"] == entra.tenant.region
    v1 = get(f"{entra.login}/{tid}/.well-known/openid-configuration").json()
    assert v1["issuer"] == f"https://sts.windows.net/{tid}/"
    assert v1["jwks_uri"] == f"{entra.login}/common/discovery/keys"
    # endpoints follow the name the client used
    alias = entra.lab.url("entra", host="login.lab.test")
    assert get(f"{alias}/{tid}/v2.0/.well-known/openid-configuration").json()["token_endpoint"].startswith(alias)
    unknown = get(f"{entra.login}/nowhere.example/v2.0/.well-known/openid-configuration")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_tenant"
    assert unknown.json()["error_codes"] == [90002]


def test_jwks_and_the_site_validator(entra: EntraClient, lab: Lab) -> None:
    keys = entra.http.get(f"{entra.login}/common/discovery/keys").json()["keys"]
    assert len(keys) == 1 and "issuer" not in keys[0]
    der = base64.b64decode(keys[0]["x5c"][0])
    x5t = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
    assert keys[0]["kid"] == keys[0]["x5t"] == x5t and keys[0]["kty"] == "RSA" and keys[0]["use"] == "sig"
    assert x509.load_der_x509_certificate(der).subject.rfc4514_string() == "CN=accounts.accesscontrol.windows.net"
    v2 = entra.http.get(f"{entra.login}/{entra.tenant.tenant_id}/discovery/v2.0/keys").json()["keys"][0]
    assert v2["kid"] == x5t and v2["issuer"] == "https://login.microsoftonline.com/{tenantid}/v2.0"

    # the CMG/MP validator accepts a token, fetching these keys over the lab's names
    token = entra.ropc("https://ConfigMgrService").json()["access_token"]

    async def validate() -> dict:
        async with lab.http_client() as client:
            return await EntraKeys(client, lab.entra_jwks_url()).validate(token, audiences=["https://ConfigMgrService"])

    assert asyncio.run(validate())["upn"] == entra.alice.upn


def test_instance_discovery(entra: EntraClient) -> None:
    alias = entra.lab.url("entra", host="login.lab.test")
    reply = entra.http.get(
        f"{alias}/common/discovery/instance",
        params={
            "api-version": "1.1",
            "authorization_endpoint": f"{alias}/{entra.tenant.tenant_id}/oauth2/v2.0/authorize",
        },
    )
    body = reply.json()
    tid = entra.tenant.tenant_id
    assert body["tenant_discovery_endpoint"] == f"{alias}/{tid}/v2.0/.well-known/openid-configuration"
    assert body["api-version"] == "1.1"
    assert "login.windows.net" in body["metadata"][0]["aliases"]
    assert any("login.lab.test" in m["aliases"] for m in body["metadata"])
    unknown = entra.http.get(
        f"{entra.login}/common/discovery/instance",
        params={"api-version": "1.1", "authorization_endpoint": "https://login.example.com/common/oauth2/authorize"},
    )
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_instance"
    assert unknown.json()["error_codes"] == [50049]


def test_user_realm(entra: EntraClient) -> None:
    get = entra.http.get
    managed = get(f"{entra.login}/common/userrealm/alice@lab.test", params={"api-version": "1.0"}).json()
    assert managed == {
        "ver": "1.0",
        "account_type": "Managed",
        "domain_name": "lab.test",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_audience_urn": "urn:federation:MicrosoftOnline",
    }
    federated = get(f"{entra.login}/common/UserRealm/someone@fed.lab.test", params={"api-version": "1.0"}).json()
    assert federated["account_type"] == "Federated" and federated["federation_protocol"] == "WSTrust"
    assert federated["federation_metadata_url"].endswith("/adfs/services/trust/mex")
    v2 = get(f"{entra.login}/common/UserRealm/alice@lab.test", params={"api-version": "2.0"}).json()
    assert v2["NameSpaceType"] == "Managed" and v2["Login"] == "alice@lab.test" and v2["DomainName"] == "lab.test"
    v2_fed = get(f"{entra.login}/common/userrealm/x@fed.lab.test", params={"api-version": "2.0"}).json()
    assert v2_fed["NameSpaceType"] == "Federated" and "wsignin1.0" in v2_fed["AuthURL"]
    unknown = get(f"{entra.login}/common/userrealm/x@unknown.example", params={"api-version": "1.0"}).json()
    assert unknown["account_type"] == "Unknown"


@pytest.mark.parametrize("version", ["1.7", "1.9"])
def test_drs_discovery(entra: EntraClient, version: str) -> None:
    tid = entra.tenant.tenant_id
    for key, path in ((entra.tenant.initial_domain, "discover"), (tid, "Discover")):
        reply = entra.http.get(
            f"{entra.drs}/{key}/{path}",
            params={"api-version": version},
            headers={"Accept": "application/json", "ocp-adrs-client-name": "dsreg"},
        )
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert doc["DeviceJoinService"] == {
            "JoinEndpoint": f"{entra.drs}/EnrollmentServer/device/",
            "JoinResourceId": DRS_RESOURCE,
            "ServiceVersion": "2.0",
        }
        assert doc["AuthenticationService"]["OAuth2"]["TokenEndpoint"] == f"{entra.login}/{tid}/oauth2/token"
        assert doc["TenantInfo"]["TenantId"] == tid and doc["IdentityProviderService"]["Federated"] is False
        assert doc["NonceService"]["Endpoint"] == f"{entra.drs}/EnrollmentServer/nonce/{tid}/"
    federated = entra.http.get(f"{entra.drs}/fed.lab.test/discover", params={"api-version": version}).json()
    assert federated["IdentityProviderService"]["Federated"] is True
    missing = entra.http.get(f"{entra.drs}/nowhere.example/discover", params={"api-version": version})
    assert missing.status_code == 404 and missing.json()["Message"].startswith("AADSTS90002")


def test_drs_nonce_service(entra: EntraClient) -> None:
    reply = entra.http.get(
        f"{entra.drs}/EnrollmentServer/nonce/{entra.tenant.tenant_id}/", params={"api-version": "1.0"}
    )
    assert reply.status_code == 200
    assert reply.json()["ReponseStatus"]["message"] == "Successfully created a nonce" and reply.json()["Value"]
