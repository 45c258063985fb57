"""The bench scenarios that need a joined device or a fresh one per request (issue 20's missing rows):
the Entra device token, the DRS join, and CCM_STS with an AAD or a BulkRegistration proof.

What a real client does stays in each request; what it does once (or what a device does before the request
leaves it) is done here before the measurement:
- device token: a srv_challenge nonce is asked for every request, as the agent does (`EntraClient.nonce`),
  and the request JWT is signed with the device key after the nonce arrives: two requests per operation,
  on one keep-alive connection (the floor counts both);
- DRS join: every request registers a new device; its device key, transport key and signed PKCS#10 are made
  before the timed window (keys from the fleet's key pool), so that the load generator measures the server;
- CCM_STS (AAD): the device's Entra token for the ConfigMgr resource (one device token, made once) with the
  client's signature over token;timestamp; CCM_STS (BulkRegistration): a bulk registration token the site
  issued (as BulkRegistrationTokenTool.exe records it) with the proof of possession.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.agent import entra
from cmglab.core.labconfig import CONFIGMGR_CLIENT_APP_ID, CONFIGMGR_RESOURCE_URI
from cmglab.pki.builders import cert_der, new_key
from cmglab.runtime.lab import Lab
from cmglab.tools.bench import floor, loadgen
from cmglab.tools.bench.scenarios import BenchClient, Scenario, service_target
from cmglab.tools.fleet.keypool import KeyPool
from cmglab.tools.site_store import open_site_store
from cmglab.wire import ccm_messaging as cm
from cmglab.wire import httpclient

MAX_JOINS = 1500  # distinct pre-made joins at most (two pooled keys and one CSR signature each)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class JoinedDevice:
    """The bench's one Entra-joined device: its certificate and key (the device token's signer)."""

    tenant: str
    domain: str
    drs_token: str  # the user's DRS access token (what the join web app gets with the password)
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


@contextmanager
def _entra(lab: Lab) -> Iterator[entra.EntraClient]:
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle)
    with httpclient.client(ctx=ctx, resolve=lab.resolve(), timeout=30) as http:
        yield entra.EntraClient(http, lab.resolve())


def join_body(domain: str, device_key: rsa.RSAPrivateKey, transport_key: rsa.RSAPrivateKey) -> bytes:
    """The join request dsregcmd sends (JoinType 0, a managed user): a new device each time."""
    return json.dumps(
        {
            "CertificateRequest": {"Type": "pkcs10", "Data": base64.b64encode(entra.csr(device_key)).decode()},
            "TransportKey": entra.transport_key_blob(transport_key.public_key()),
            "TargetDomain": domain,
            "DeviceType": "Windows",
            "OSVersion": entra.OS_VERSION,
            "DeviceDisplayName": "BENCH-" + uuid.uuid4().hex[:8].upper(),
            "JoinType": 0,
            "attributes": {"ReuseDevice": "true", "ReturnClientSid": "true"},
        }
    ).encode()


def join_device(lab: Lab) -> JoinedDevice:
    """Join one device as the agent does (ROPC for the DRS, then the join): the device token's subject."""
    tenant = lab.config.primary_tenant
    user = tenant.users[0]
    with _entra(lab) as client:
        token_url = f"{client.login}/{tenant.tenant_id}/oauth2/token"
        drs = client.password_token(
            token_url,
            client_id=entra.BROKER_CLIENT_ID,
            resource=entra.DRS_RESOURCE,
            username=user.upn,
            password=user.password,
        )
        domain = user.upn.split("@", 1)[1]
        key = new_key()
        reply = client.join(
            f"{client.drs}/EnrollmentServer/device/",
            drs.access_token,
            json.loads(join_body(domain, key, new_key())),
        )
    cert = x509.load_der_x509_certificate(base64.b64decode(reply["Certificate"]["RawBody"]))
    return JoinedDevice(tenant.tenant_id, domain, drs.access_token, cert, key)


def device_token(lab: Lab, device: JoinedDevice) -> Scenario:
    """srv_challenge, then the device-certificate-signed jwt-bearer request with that nonce (the ConfigMgr
    resource, as the agent's ADAL asks it before CCM_STS)."""
    path = f"/{device.tenant}/oauth2/token"
    x5c = base64.b64encode(cert_der(device.cert)).decode()

    def signed(reply: bytes) -> loadgen.Request:
        try:
            nonce = json.loads(reply)["Nonce"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"srv_challenge reply without Nonce: {reply[:200]!r}") from e
        request = jwt.encode(
            {
                "request_nonce": nonce,
                "resource": CONFIGMGR_RESOURCE_URI,
                "client_id": CONFIGMGR_CLIENT_APP_ID,
                "win_ver": entra.OS_VERSION,
                "grant_type": "device_token",
                "redirect_uri": f"ms-appx-web://Microsoft.AAD.BrokerPlugin/{CONFIGMGR_CLIENT_APP_ID}",
                "iss": "aad:brokerplugin",
            },
            device.key,
            algorithm="RS256",
            headers={"typ": "JWT", "x5c": x5c, "kdf_ver": 2},
        )
        form = {
            "windows_api_version": "2.2",
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "request": request,
        }
        return loadgen.Request("POST", path, FORM, urlencode(form).encode())

    challenge = loadgen.Request("POST", path, FORM, b"grant_type=srv_challenge", then=signed)
    return Scenario(floor.DEVICE_TOKEN, service_target(lab, "entra"), challenge, requests=2)


def _join_keys(pool: Path | None, joins: int) -> list[rsa.RSAPrivateKey]:
    """Two keys per join: from the key pool file when it has them, else a few made now (then reused)."""
    if pool is not None and pool.exists():
        pooled = KeyPool.load(pool)
        keys = [pooled.take() for _ in range(min(len(pooled), 2 * joins))]
        if len(keys) >= 2:
            return keys
    return [new_key() for _ in range(4)]


def drs_join(lab: Lab, device: JoinedDevice, pool: Path | None, joins: int) -> Scenario:
    """A new device per request: `joins` different joins made now (CSR signed, keys made) and sent in turn;
    past that many a body is sent again, which the DRS still registers as a new device."""
    keys = _join_keys(pool, min(joins, MAX_JOINS))
    bodies = [join_body(device.domain, keys[i], keys[i + 1]) for i in range(0, len(keys) - 1, 2)]
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": entra.USER_AGENT,
        "ocp-adrs-client-name": "Dsreg",
        "ocp-adrs-client-version": "10.0",
        "Authorization": f"Bearer {device.drs_token}",
    }
    requests = [loadgen.Request("POST", "/EnrollmentServer/device/?api-version=2.0", headers, b) for b in bodies]
    return Scenario(floor.DRS_JOIN, service_target(lab, "entra"), requests[0], variants=requests)


def _proof_body(proof: str, bearer: str, client: BenchClient) -> bytes:
    when = cm.utc_timestamp()
    return json.dumps(
        {
            "ProofType": proof,
            "ClientId": None,
            "Certificate": cm.cert_hex(client.cert),
            "Timestamp": when,
            "Signature": cm.sign_hex(client.key, cm.utf16(f"{bearer};{when}")),
        }
    ).encode()


def aad_device_token(lab: Lab, device: JoinedDevice) -> str:
    """The joined device's Entra token for the ConfigMgr resource (what the agent's ADAL gets)."""
    with _entra(lab) as client:
        return client.device_token(
            device.tenant, device.cert, device.key, client_id=CONFIGMGR_CLIENT_APP_ID, resource=CONFIGMGR_RESOURCE_URI
        ).access_token


def sts_aad(lab: Lab, device: JoinedDevice) -> Scenario:
    token = aad_device_token(lab, device)
    body = _proof_body("AAD", token, BenchClient.new())
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    return Scenario(
        floor.STS_AAD, service_target(lab, "management-point"), loadgen.Request("POST", "/CCM_STS", headers, body)
    )


def bulk_token(lab: Lab) -> str:
    """A bulk registration token recorded in the running site's database, as `cmglab bulk-token new` does."""
    token, guid, start, end = lab.site_signer().bulk_token(minutes=60)
    _, store = open_site_store(lab.dir, seed=False)
    store.add_bulk_token(guid, 60, start, end)
    return token


def sts_bulk(lab: Lab) -> Scenario:
    token = bulk_token(lab)
    body = _proof_body("BulkRegistration", token, BenchClient.new())
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    return Scenario(
        floor.STS_BULK, service_target(lab, "management-point"), loadgen.Request("POST", "/CCM_STS", headers, body)
    )


def entra_rows(lab: Lab, pool: Path | None, joins: int) -> list[Scenario]:
    """The four scenarios; the joined device and the tokens are made now (a few requests, not measured)."""
    device = join_device(lab)
    return [device_token(lab, device), drs_join(lab, device, pool, joins), sts_aad(lab, device), sts_bulk(lab)]
