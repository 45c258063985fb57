"""A device's side of Entra join, built here from the wire contract (docs/protocol-notes.md, Entra §3), not
from the emulator's code: keys, the CSR, the BCRYPT transport key, join bodies, signed requests."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from tests.support.lab import lab_client

PLACEHOLDER_CN = "7E980AD9-B86D-4306-9425-9AC066FB014A"  # what every client puts in its CSR
DRS_RESOURCE = "urn:ms-drs:enterpriseregistration.windows.net"
AAD_POWERSHELL = "1b730954-1685-4b74-9bfd-dac224a7b894"
CONFIGMGR_CLIENT = "0b7c8ab3-9ea1-4ffa-b2b9-8ffdd944bd8b"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def csr_b64(key: rsa.RSAPrivateKey, cn: str = PLACEHOLDER_CN) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()


def bcrypt_blob_b64(key: rsa.RSAPrivateKey) -> str:
    """BCRYPT_RSAKEY_BLOB, public part: RSA1, bit length, len(e), len(n), 0, 0, e, n (big-endian)."""
    numbers = key.public_key().public_numbers()
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    return base64.b64encode(b"RSA1" + struct.pack("<LLLLL", key.key_size, len(e), len(n), 0, 0) + e + n).decode()


def join_body(
    device_key: rsa.RSAPrivateKey,
    transport_key: rsa.RSAPrivateKey,
    *,
    join_type: int = 0,
    name: str = "LAB-PC01",
    domain: str = "lab.test",
) -> dict[str, Any]:
    return {
        "CertificateRequest": {"Type": "pkcs10", "Data": csr_b64(device_key)},
        "TransportKey": bcrypt_blob_b64(transport_key),
        "TargetDomain": domain,
        "DeviceType": "Windows",
        "OSVersion": "10.0.19045.3803",
        "DeviceDisplayName": name,
        "JoinType": join_type,
        "attributes": {"ReuseDevice": "true", "ReturnClientSid": "true"},
    }


def self_signed(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A computer's self-signed userCertificate (CN=<objectGUID>), as the hybrid join task makes it."""
    key = new_key()
    now = datetime.now(UTC) - timedelta(minutes=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def signed_request(cert: x509.Certificate, key: rsa.RSAPrivateKey, payload: dict[str, Any]) -> str:
    """The device-certificate-signed request JWS (x5c is a string, as Windows sends it)."""
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    return jwt.encode(payload, key, algorithm="RS256", headers={"x5c": x5c, "kdf_ver": 2})


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


@dataclass
class Joined:
    device_id: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path
    key_path: Path


class EntraClient:
    """Talks to the lab's Entra as a device does, over the real names (mapped to loopback)."""

    def __init__(self, lab: Lab, http: httpx.Client) -> None:
        self.lab, self.http = lab, http
        self.login = lab.url("entra")
        self.drs = lab.url("entra", host="enterpriseregistration.windows.net")
        self.tenant = lab.config.primary_tenant
        self.alice = self.tenant.users[0]

    def ropc(
        self,
        resource: str = DRS_RESOURCE,
        *,
        client_id: str = AAD_POWERSHELL,
        upn: str | None = None,
        password: str | None = None,
        tenant: str = "common",
    ) -> httpx.Response:
        return self.http.post(
            f"{self.login}/{tenant}/oauth2/token",
            data={
                "client_id": client_id,
                "grant_type": "password",
                "resource": resource,
                "username": upn or self.alice.upn,
                "password": password or self.alice.password,
            },
        )

    def drs_token(self) -> str:
        reply = self.ropc()
        assert reply.status_code == 200, reply.text
        return str(reply.json()["access_token"])

    def join(self, body: dict[str, Any], token: str | None = None) -> httpx.Response:
        return self.http.post(
            f"{self.drs}/EnrollmentServer/device/",
            params={"api-version": "2.0"},
            json=body,
            headers={"Authorization": f"Bearer {token or self.drs_token()}"},
        )

    def join_device(self, tmp: Path, name: str = "LAB-PC01") -> Joined:
        key = new_key()
        reply = self.join(join_body(key, new_key(), name=name))
        assert reply.status_code == 201, reply.text
        cert = x509.load_der_x509_certificate(base64.b64decode(reply.json()["Certificate"]["RawBody"]))
        device_id = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        cert_path, key_path = tmp / f"{device_id}.pem", tmp / f"{device_id}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return Joined(device_id, cert, key, cert_path, key_path)

    def nonce(self) -> str:
        reply = self.http.post(f"{self.login}/common/oauth2/token", data={"grant_type": "srv_challenge"})
        assert reply.status_code == 200, reply.text
        return str(reply.json()["Nonce"])

    def device_request(
        self, device: Joined, inner: dict[str, Any], *, tenant: str | None = None, nonce: str | None = None
    ) -> httpx.Response:
        payload = {"request_nonce": nonce or self.nonce(), **inner}
        return self.http.post(
            f"{self.login}/{tenant or self.tenant.tenant_id}/oauth2/token",
            data={
                "windows_api_version": "2.2",
                "grant_type": JWT_BEARER,
                "request": signed_request(device.cert, device.key, payload),
            },
        )

    def devices(self) -> list[dict[str, Any]]:
        reply = self.http.get(f"{self.login}/_lab/devices")
        assert reply.status_code == 200
        return list(reply.json()["devices"])


def device_token_request(
    resource: str = "https://ConfigMgrService",
    client_id: str = CONFIGMGR_CLIENT,
) -> dict[str, Any]:
    return {
        "resource": resource,
        "client_id": client_id,
        "win_ver": "10.0.22621.608",
        "grant_type": "device_token",
        "redirect_uri": f"ms-appx-web://Microsoft.AAD.BrokerPlugin/{client_id}",
        "iss": "aad:brokerplugin",
    }


@contextmanager
def entra_session(lab: Lab) -> Iterator[EntraClient]:
    """A client for the lab's (running) Entra: `entra = lab_fixture("entra", session=entra_session)`."""
    with lab_client(lab) as http:
        yield EntraClient(lab, http)


@contextmanager
def entra_client(lab: Lab, lab_services: LabProcesses) -> Iterator[EntraClient]:
    """The lab's Entra service (started if needed) and a client for it."""
    lab_services.ensure("entra")
    with entra_session(lab) as client:
        yield client
