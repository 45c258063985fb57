"""Entra join as seed 002 describes it (managed, stages A–H), hybrid join of a synced computer, and
delete with the device certificate — over real TLS sockets to the lab's Entra service."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID

from cmglab.runtime.lab import Lab
from tests.support.entra_device import (
    DRS_RESOURCE,
    EntraClient,
    bcrypt_blob_b64,
    claims,
    csr_b64,
    device_token_request,
    entra_session,
    join_body,
    new_key,
    self_signed,
)
from tests.support.lab import lab_client, lab_fixture

MS_ORG_ACCESS = "OU=82dbaca4-3e81-46ca-9c73-0950c1eaca97,CN=MS-Organization-Access,DC=windows,DC=net"


entra = lab_fixture("entra", session=entra_session)


def ext(cert: x509.Certificate, suffix: int) -> bytes:
    value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(f"1.2.840.113556.1.5.284.{suffix}")).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def test_managed_join_stages_a_to_h(entra: EntraClient, lab: Lab) -> None:
    http, tenant, alice = entra.http, entra.tenant, entra.alice
    domain = alice.upn.split("@")[1]

    # A: the join app discovers the authorization endpoint from the OpenID configuration
    config = http.get(f"{entra.login}/{domain}/.well-known/openid-configuration").json()
    assert config["issuer"] == f"https://sts.windows.net/{tenant.tenant_id}/"
    assert config["authorization_endpoint"] == f"{entra.login}/{tenant.tenant_id}/oauth2/authorize"
    # B: it builds a sign-in request for that endpoint and collects the user's credentials
    token_endpoint = config["token_endpoint"]
    # C: user realm (managed, not federated), then the credentials are posted and validated
    realm = http.get(f"{entra.login}/common/userrealm/{alice.upn}", params={"api-version": "1.0"}).json()
    assert realm["account_type"] == "Managed" and realm["domain_name"] == domain
    reply = http.post(
        token_endpoint,
        data={
            "client_id": "1b730954-1685-4b74-9bfd-dac224a7b894",
            "grant_type": "password",
            "resource": DRS_RESOURCE,
            "username": alice.upn,
            "password": alice.password,
        },
    )
    assert reply.status_code == 200, reply.text
    tokens = reply.json()
    id_token, access = claims(tokens["id_token"]), claims(tokens["access_token"])
    assert id_token["upn"] == alice.upn and id_token["tid"] == tenant.tenant_id
    assert access["aud"] == DRS_RESOURCE and access["oid"] == alice.object_id and access["ver"] == "1.0"
    # D: no MDM terms of use (mdm_tou_url) in the lab: the optional step is skipped
    assert "mdm_tou_url" not in id_token
    # E: DRS discovery gives the tenant's join endpoint
    drs = http.get(
        f"{entra.drs}/{domain}/discover",
        params={"api-version": "1.7"},
        headers={"ocp-adrs-client-name": "dsreg", "ocp-adrs-client-version": "10"},
    ).json()
    join_service = drs["DeviceJoinService"]
    assert join_service["JoinResourceId"] == DRS_RESOURCE
    assert join_service["JoinEndpoint"] == f"{entra.drs}/EnrollmentServer/device/"
    assert drs["TenantInfo"]["TenantId"] == tenant.tenant_id
    # F: device key (dkpub/dkpriv), a CSR signed with dkpriv, and a transport key (tkpub)
    device_key, transport_key = new_key(), new_key()
    body = join_body(device_key, transport_key, name="LAB-JOIN-AH")
    # G: the registration request with the token, the CSR and tkpub
    reply = http.post(
        join_service["JoinEndpoint"],
        params={"api-version": "2.0"},
        json=body,
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert reply.status_code == 201, reply.text
    result = reply.json()
    # H: the device ID and the device certificate, issued by MS-Organization-Access for the device key
    cert = x509.load_der_x509_certificate(base64.b64decode(result["Certificate"]["RawBody"]))
    device_id = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    assert cert.subject.rfc4514_string() == f"CN={device_id}" and uuid.UUID(device_id)
    assert cert.issuer.rfc4514_string() == MS_ORG_ACCESS
    cert.verify_directly_issued_by(lab.pki.device_ca.cert())
    assert cert.public_key() == device_key.public_key()
    assert result["Certificate"]["Thumbprint"] == cert.fingerprint(hashes.SHA1()).hex().upper()
    assert result["User"] == {"Upn": alice.upn}
    assert result["MembershipChanges"][0]["LocalSID"] == "S-1-5-32-544"
    assert ext(cert, 2) == uuid.UUID(device_id).bytes_le and ext(cert, 5) == uuid.UUID(tenant.tenant_id).bytes_le
    assert ext(cert, 3) == uuid.UUID(alice.object_id).bytes_le and ext(cert, 7) == b"1"
    assert ext(cert, 8) == tenant.region.encode()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(days=3600)
    device = next(d for d in entra.devices() if d["device_id"] == device_id)
    assert device["trust_type"] == "AzureAd" and device["join_type"] == 0 and device["owner_id"] == alice.object_id
    assert device["cert_thumbprint"] == result["Certificate"]["Thumbprint"] and device["display_name"] == "LAB-JOIN-AH"
    assert "pwd" in device["registration_auth_methods"]


def test_register_is_workplace_with_join_type_0_extension(entra: EntraClient) -> None:
    reply = entra.join(join_body(new_key(), new_key(), join_type=4, name="LAB-BYOD"))
    assert reply.status_code == 201, reply.text
    cert = x509.load_der_x509_certificate(base64.b64decode(reply.json()["Certificate"]["RawBody"]))
    assert ext(cert, 7) == b"0"
    device_id = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    assert next(d for d in entra.devices() if d["device_id"] == device_id)["trust_type"] == "Workplace"


def _computer(lab: Lab) -> tuple[str, str]:
    account = next(a for a in lab.config.active_directory.accounts if a.name.endswith("$"))
    assert account.sid
    return account.name, account.sid


def _hybrid_body(key: Any, sid: str, tenant_id: str, *, when: datetime | None = None) -> dict[str, Any]:
    stamp = f"{sid}.{(when or datetime.now(UTC)).strftime('%Y-%m-%d %H:%M:%S')}Z"
    signed = base64.b64encode(key.sign(stamp.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
    return {
        "CertificateRequest": {"Type": "pkcs10", "Data": csr_b64(new_key())},
        "ServerAdJoinData": {
            "TransportKey": bcrypt_blob_b64(new_key()),
            "TargetDomain": tenant_id,
            "DeviceType": "Windows",
            "OSVersion": "10.0.19045.3803",
            "DeviceDisplayName": "LAB01",
            "TargetDomainId": tenant_id,
            "SourceDomainController": "dc01.corp.lab.test",
            "ClientIdentity": {"Type": "sha256signed", "Sid": stamp, "SignedBlob": signed},
        },
        "JoinType": 6,
        "attributes": {"ReuseDevice": "true", "ReturnClientSid": "true"},
    }


def test_hybrid_join_of_a_synced_computer(entra: EntraClient, lab: Lab, admin_headers: dict[str, str]) -> None:
    name, sid = _computer(lab)
    object_guid = str(uuid.uuid4())
    user_cert, user_key = self_signed(object_guid)
    url = f"{entra.drs}/EnrollmentServer/device/{object_guid}"
    tid = entra.tenant.tenant_id

    # before Entra Connect synced the computer, the DRS does not know it
    missing = entra.http.put(url, params={"api-version": "2.0"}, json=_hybrid_body(user_key, sid, tid))
    assert missing.status_code == 400 and missing.json()["SubCode"] == "error_missing_device"

    # the sync: objectGUID, computer SID and the userCertificate
    sync = {
        "tenant": tid,
        "device_id": object_guid,
        "onprem_sid": sid,
        "display_name": name.rstrip("$"),
        "user_certificate": base64.b64encode(user_cert.public_bytes(serialization.Encoding.DER)).decode(),
    }
    assert entra.http.post(f"{entra.login}/_lab/devices", json=sync).status_code == 401
    created = entra.http.post(f"{entra.login}/_lab/devices", json=sync, headers=admin_headers)
    assert created.status_code == 201, created.text
    assert created.json()["trust_type"] == "ServerAd" and created.json()["cert_thumbprint"] is None

    # a SID blob signed by another key, or an old one, is refused and changes nothing
    forged = entra.http.put(url, params={"api-version": "2.0"}, json=_hybrid_body(new_key(), sid, tid))
    assert forged.status_code == 400 and forged.json()["Message"].startswith("AADSTS50006")
    stale = _hybrid_body(user_key, sid, tid, when=datetime.now(UTC) - timedelta(hours=2))
    assert entra.http.put(url, params={"api-version": "2.0"}, json=stale).json()["Message"].startswith("AADSTS50013")
    assert next(d for d in entra.devices() if d["device_id"] == object_guid)["cert_thumbprint"] is None

    reply = entra.http.put(url, params={"api-version": "2.0"}, json=_hybrid_body(user_key, sid, tid))
    assert reply.status_code == 200, reply.text
    cert = x509.load_der_x509_certificate(base64.b64decode(reply.json()["Certificate"]["RawBody"]))
    assert cert.subject.rfc4514_string() == f"CN={object_guid}" and ext(cert, 7) == b"1"
    assert cert.issuer.rfc4514_string() == MS_ORG_ACCESS
    device = next(d for d in entra.devices() if d["device_id"] == object_guid)
    assert device["join_type"] == 6 and device["trust_type"] == "ServerAd" and device["onprem_sid"] == sid
    assert device["cert_thumbprint"] == reply.json()["Certificate"]["Thumbprint"]


def test_delete_with_the_device_certificate(entra: EntraClient, lab: Lab, tmp_path: Path) -> None:
    device = entra.join_device(tmp_path, "LAB-DELETE")
    other = entra.join_device(tmp_path, "LAB-OTHER")
    url = f"{entra.drs}/EnrollmentServer/device/{device.device_id}"

    no_cert = entra.http.delete(url)
    assert no_cert.status_code == 401 and no_cert.json()["Message"].startswith("AADSTS50155")
    with lab_client(lab, cert=(other.cert_path, other.key_path)) as as_other:
        assert as_other.delete(url).status_code == 403
    assert any(d["device_id"] == device.device_id for d in entra.devices())

    with lab_client(lab, cert=(device.cert_path, device.key_path)) as as_device:
        reply = as_device.delete(url)
        assert reply.status_code == 200, reply.text
        assert as_device.delete(url).status_code == 404
    assert not any(d["device_id"] == device.device_id for d in entra.devices())
    # the deleted device's certificate no longer gets tokens
    gone = entra.device_request(device, device_token_request())
    assert gone.status_code == 400 and gone.json()["error_codes"] == [700003]
