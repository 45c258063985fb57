"""The Entra ID and DRS protocol as the device speaks it (docs/protocol-notes.md (Entra)), one method per step.

Used by dsregcmd (join, hybrid join, leave) and by the ADAL/WAM stand-in (device and user tokens).
Well-known hosts keep their real names; in the embedded lab the device's name mapping also says which
port answers for them (a lab device has no other way to learn it).
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cmglab.pki.builders import cert_der
from cmglab.wire.httpclient import parse_resolve

LOGIN_HOST = "login.microsoftonline.com"
DRS_HOST = "enterpriseregistration.windows.net"
DRS_RESOURCE = "urn:ms-drs:enterpriseregistration.windows.net"
# what Windows' CloudAP/dsreg use to get the DRS token: the Microsoft Authentication Broker
BROKER_CLIENT_ID = "29d9ed98-a469-4536-ade2-f981bc1d605e"
CSR_SUBJECT = "7E980AD9-B86D-4306-9425-9AC066FB014A"  # the constant placeholder Windows puts in the CSR
OS_VERSION = "10.0.22631.4169"
USER_AGENT = f"Dsreg/10.0 (Windows {OS_VERSION})"


class EntraError(Exception):
    """A refusal by Entra or the DRS: `code` is the AADSTS number when the reply has one."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: int | None = None,
        error: str = "",
        error_type: str = "",
        server_message: str = "",
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.error = status, code, error
        self.error_type, self.server_message = error_type, server_message  # the DRS's ErrorType and Message


def base_url(host: str, resolve: list[str]) -> str:
    """https://host, or https://host:PORT when the device's name mapping maps the host on one port."""
    ports = sorted({port for (h, port) in parse_resolve(resolve) if h == host.lower()})
    if not ports or 443 in ports:
        return f"https://{host}"
    return f"https://{host}:{ports[0]}"


def _error(reply: httpx.Response, what: str) -> EntraError:
    try:
        body = reply.json()
    except ValueError:
        body = {}
    codes = body.get("error_codes") or []
    desc = body.get("error_description") or body.get("Message") or reply.text[:300]
    code = codes[0] if codes else None
    if code is None and isinstance(desc, str) and desc.startswith("AADSTS"):
        digits = desc[6:].split(":", 1)[0]
        code = int(digits) if digits.isdigit() else None
    first = str(desc).split("\r\n", 1)[0]
    return EntraError(
        f"{what} failed: HTTP {reply.status_code} {body.get('error', body.get('ErrorType', ''))}: {first}",
        status=reply.status_code,
        code=code,
        error=str(body.get("error", "")),
        error_type=str(body.get("ErrorType", "")),
        server_message=first,
    )


def transport_key_blob(key: rsa.RSAPublicKey) -> str:
    """BCRYPT_RSAKEY_BLOB (RSA1, no primes), base64: the DRS TransportKey."""
    nums = key.public_numbers()
    e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
    n = nums.n.to_bytes((key.key_size + 7) // 8, "big")
    head = b"RSA1" + b"".join(v.to_bytes(4, "little") for v in (key.key_size, len(e), len(n), 0, 0))
    return base64.b64encode(head + e + n).decode()


def csr(device_key: rsa.RSAPrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CSR_SUBJECT)]))
        .sign(device_key, hashes.SHA256())
    )
    return request.public_bytes(Encoding.DER)


@dataclass
class TokenReply:
    access_token: str
    claims: dict[str, Any]
    raw: dict[str, Any]

    @property
    def expires_on(self) -> int:
        return int(self.claims.get("exp") or time.time() + 3599)


def _token_reply(doc: dict[str, Any]) -> TokenReply:
    token = doc.get("access_token")
    if not token:
        raise EntraError("token reply without access_token")
    claims = jwt.decode(token, options={"verify_signature": False})
    return TokenReply(token, claims, doc)


class EntraClient:
    def __init__(self, http: httpx.Client, resolve: list[str]) -> None:
        self.http = http
        self.login = base_url(LOGIN_HOST, resolve)
        self.drs = base_url(DRS_HOST, resolve)

    # -- login host ---------------------------------------------------------------------------
    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        reply = self.http.get(f"{self.login}/{tenant}/.well-known/openid-configuration")
        if reply.status_code != 200:
            raise _error(reply, "OpenID discovery")
        doc: dict[str, Any] = reply.json()
        return doc

    def user_realm(self, upn: str) -> dict[str, Any]:
        reply = self.http.get(f"{self.login}/common/userrealm/{upn}", params={"api-version": "1.0"})
        if reply.status_code != 200:
            raise _error(reply, "user realm discovery")
        doc: dict[str, Any] = reply.json()
        return doc

    def token(self, token_endpoint: str, form: dict[str, str], what: str) -> TokenReply:
        reply = self.http.post(token_endpoint, data=form, headers={"client-request-id": str(uuid.uuid4())})
        if reply.status_code != 200:
            raise _error(reply, what)
        return _token_reply(reply.json())

    def password_token(
        self, token_endpoint: str, *, client_id: str, resource: str, username: str, password: str
    ) -> TokenReply:
        """ROPC (v1): what the join web app does with the credentials the user typed."""
        return self.token(
            token_endpoint,
            {
                "grant_type": "password",
                "client_id": client_id,
                "resource": resource,
                "username": username,
                "password": password,
                "scope": "openid",
            },
            "password sign-in",
        )

    def saml_token(self, token_endpoint: str, *, client_id: str, resource: str, assertion: str) -> TokenReply:
        """A federated user's token: the STS's SAML 1.1 assertion (saml1_1-bearer grant)."""
        return self.token(
            token_endpoint,
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:saml1_1-bearer",
                "client_id": client_id,
                "resource": resource,
                "scope": "openid",
                "assertion": base64.b64encode(assertion.encode()).decode(),
            },
            "federated sign-in",
        )

    def nonce(self, tenant: str) -> str:
        reply = self.http.post(f"{self.login}/{tenant}/oauth2/token", data={"grant_type": "srv_challenge"})
        if reply.status_code != 200:
            raise _error(reply, "srv_challenge")
        value = reply.json().get("Nonce")
        if not value:
            raise EntraError("srv_challenge reply without Nonce")
        return str(value)

    def device_signed_request(
        self, tenant: str, cert: x509.Certificate, key: rsa.RSAPrivateKey, payload: dict[str, Any], what: str
    ) -> TokenReply:
        """The device-certificate-signed jwt-bearer request (docs/protocol-notes.md, Entra §2.3)."""
        payload = {"request_nonce": self.nonce(tenant), **payload}
        request = jwt.encode(
            payload,
            key,
            algorithm="RS256",
            headers={"typ": "JWT", "x5c": base64.b64encode(cert_der(cert)).decode(), "kdf_ver": 2},
        )
        return self.token(
            f"{self.login}/{tenant}/oauth2/token",
            {
                "windows_api_version": "2.2",
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "request": request,
            },
            what,
        )

    def device_token(
        self, tenant: str, cert: x509.Certificate, key: rsa.RSAPrivateKey, *, client_id: str, resource: str
    ) -> TokenReply:
        return self.device_signed_request(
            tenant,
            cert,
            key,
            {
                "resource": resource,
                "client_id": client_id,
                "win_ver": OS_VERSION,
                "grant_type": "device_token",
                "redirect_uri": f"ms-appx-web://Microsoft.AAD.BrokerPlugin/{client_id}",
                "iss": "aad:brokerplugin",
            },
            "device token",
        )

    # -- DRS ----------------------------------------------------------------------------------
    def _drs_headers(self) -> dict[str, str]:
        return {
            "User-Agent": USER_AGENT,
            "ocp-adrs-client-name": "Dsreg",
            "ocp-adrs-client-version": "10.0",
            "client-request-id": str(uuid.uuid4()),
            "Accept": "application/json",
        }

    def drs_discover(self, domain: str) -> dict[str, Any]:
        reply = self.http.get(
            f"{self.drs}/{domain}/discover", params={"api-version": "1.7"}, headers=self._drs_headers()
        )
        if reply.status_code != 200:
            raise _error(reply, "DRS discovery")
        doc: dict[str, Any] = reply.json()
        return doc

    def join(self, endpoint: str, access_token: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.post(
            endpoint,
            params={"api-version": "2.0"},
            json=body,
            headers={**self._drs_headers(), "Authorization": f"Bearer {access_token}"},
        )
        if reply.status_code not in (200, 201):
            raise _error(reply, "device registration")
        doc: dict[str, Any] = reply.json()
        return doc

    def hybrid_join(self, endpoint: str, device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.put(
            f"{endpoint.rstrip('/')}/{device_id}", params={"api-version": "2.0"}, json=body, headers=self._drs_headers()
        )
        if reply.status_code not in (200, 201):
            raise _error(reply, "hybrid device registration")
        doc: dict[str, Any] = reply.json()
        return doc

    def delete(self, endpoint: str, device_id: str) -> None:
        """DELETE with the device certificate at TLS (the caller's client carries it)."""
        reply = self.http.delete(
            f"{endpoint.rstrip('/')}/{device_id}", params={"api-version": "1.0"}, headers=self._drs_headers()
        )
        if reply.status_code not in (200, 204):
            raise _error(reply, "device delete")
