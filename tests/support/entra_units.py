"""A device joined through Entra's parts in process (no HTTP): the user's DRS token by ROPC, as dsregcmd's broker
asks for it, then the DRS join with fresh keys. For the unit tests of what the join and the grants write."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.agent import entra as agent_entra
from cmglab.pki.builders import new_key
from cmglab.runtime.lab import Lab
from cmglab.services.entra import drs as drs_crypto
from cmglab.services.entra.grants import JWT_BEARER, TokenRequest
from cmglab.services.entra.parts import Parts
from cmglab.tools.bench.entra_scenarios import join_body


def drs_token(entra: Parts, tenant_id: str, upn: str, password: str) -> str:
    form = {
        "grant_type": "password",
        "username": upn,
        "password": password,
        "client_id": agent_entra.BROKER_CLIENT_ID,
        "resource": agent_entra.DRS_RESOURCE,
    }
    return str(entra.grants.token(TokenRequest(tenant_id, False, form, "192.0.2.1")).body["access_token"])


@dataclass(frozen=True)
class JoinedDevice:
    reply: dict[str, Any]
    cert: x509.Certificate
    device_id: str
    device_key: rsa.RSAPrivateKey
    transport_key: rsa.RSAPrivateKey


def join_device(entra: Parts, drs: str, upn: str) -> JoinedDevice:
    """A new device joined by the holder of DRS token DRS (UPN's domain is the join's target domain)."""
    device_key, transport_key = new_key(), new_key()
    reply = entra.registration.join(f"Bearer {drs}", join_body(upn.split("@", 1)[1], device_key, transport_key))
    cert = x509.load_der_x509_certificate(base64.b64decode(reply["Certificate"]["RawBody"]))
    device_id = drs_crypto.device_id_of(cert)
    assert device_id is not None
    return JoinedDevice(reply, cert, device_id, device_key, transport_key)


def join_primary_user(lab: Lab, entra: Parts) -> JoinedDevice:
    """A device joined by the primary tenant's first user."""
    user = lab.config.primary_tenant.users[0]
    return join_device(entra, drs_token(entra, lab.config.primary_tenant.tenant_id, user.upn, user.password), user.upn)


def device_token(lab: Lab, entra: Parts, request: str) -> dict[str, Any]:
    """The token endpoint's reply to a device-signed jwt-bearer REQUEST in the primary tenant."""
    form = {"windows_api_version": "2.2", "grant_type": JWT_BEARER, "request": request}
    return entra.grants.token(TokenRequest(lab.config.primary_tenant.tenant_id, False, form, "192.0.2.1")).body
