"""Entra join as Windows does it (seed 002, managed environment, stages A–H), hybrid join, leave.

A  GET  <login>/<domain>/.well-known/openid-configuration       OpenID discovery
B/C GET <login>/common/userrealm/<upn>                          user realm: managed or federated
C  POST <token endpoint> grant_type=password                    the user's credentials (ROPC) for the DRS
D  mdm_tou_url claim                                            MDM terms of use (none in the lab)
E  GET  <drs>/<domain>/discover                                 DRS discovery
F  device key + transport key, CSR signed with the device key
G  POST <JoinEndpoint>?api-version=2.0                          JoinType 0 (4 = register, 6 = hybrid)
H  device certificate (CN=<deviceId>) into the My store, join state saved

The user who joins signs in (as the first sign-in after a Windows join does): the device asks for a
primary refresh token with the user's password, signed with the new device key, and keeps it sealed
(agent/prt.py); the WAM account names that user (no password is kept). The ADAL stand-in uses the PRT for
the user-token fallback. `dsregcmd /cleanupaccounts` removes both; `dsregcmd /signin` (lab) signs a user in
on a joined device (a hybrid device has no user at join).
"""

from __future__ import annotations

import base64
import logging
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cmglab.agent import prt as prts
from cmglab.agent.certstore import MY
from cmglab.agent.device import Device, machine_account
from cmglab.agent.entra import (
    BROKER_CLIENT_ID,
    DRS_RESOURCE,
    OS_VERSION,
    EntraClient,
    EntraError,
    csr,
    transport_key_blob,
)
from cmglab.agent.keys import new_key
from cmglab.agent.network import DeviceNetwork, NetworkError
from cmglab.agent.protect import write_private
from cmglab.agent.prt import PrtClient
from cmglab.agent.wstrust import saml_assertion, windows_assertion
from cmglab.core.ad import ADError, LabDirectory
from cmglab.pki.builders import cert_der, self_signed, sha1_thumbprint
from cmglab.pki.builders import name as x509_name
from cmglab.wire import tracing

WAM_PURPOSE = "WAM accounts"
DSREG_E_DIRECTORY_FAILURE = 0x801C03F2  # the DRS does not find the device object (not synced yet)
DSREG_E_JOIN_FAILED = 0x801C03F3


class JoinError(Exception):
    pass


def wam_account(device: Device) -> dict[str, Any] | None:
    value = device.dpapi.load(device.wam_path, WAM_PURPOSE)
    return value if isinstance(value, dict) else None


def join_state(device: Device) -> dict[str, Any] | None:
    return device.read_json(device.join_path)


class Joiner:
    def __init__(self, device: Device, network: DeviceNetwork, log: logging.Logger) -> None:
        self.device, self.network, self.log = device, network, log

    def _client(self, http: Any) -> EntraClient:
        return EntraClient(http, self.network.resolve)

    def join(self, username: str, password: str) -> dict[str, Any]:
        if join_state(self.device):
            raise JoinError("This device is already joined to Azure AD: run `dsregcmd /leave` first")
        domain = username.rpartition("@")[2]
        if not domain:
            raise JoinError(f"{username!r} is not a user principal name (user@domain)")
        with self.network.client() as http, tracing.operation(self.device.info.name, tracing.Step.JOIN):
            entra = self._client(http)
            self.log.info(f"Stage A: OpenID discovery for '{domain}'")
            oidc = entra.openid_configuration(domain)
            self.log.info(f"Stage B/C: user realm discovery for '{username}'")
            realm = entra.user_realm(username)
            if realm.get("account_type") == "Federated":
                metadata = str(realm.get("federation_metadata_url", ""))
                self.log.info(
                    f"Stage C: federated environment; WS-Trust sign-in at the federation service ({metadata})"
                )
                assertion = saml_assertion(http, metadata, username, password)
                drs_token = entra.saml_token(
                    oidc["token_endpoint"], client_id=BROKER_CLIENT_ID, resource=DRS_RESOURCE, assertion=assertion
                )
            elif realm.get("account_type") == "Managed":
                self.log.info("Stage C: managed environment; signing in with the user's password for the DRS")
                drs_token = entra.password_token(
                    oidc["token_endpoint"],
                    client_id=BROKER_CLIENT_ID,
                    resource=DRS_RESOURCE,
                    username=username,
                    password=password,
                )
            else:
                raise JoinError(
                    f"{domain} is not a domain of any Azure AD tenant (account_type {realm.get('account_type')!r})"
                )
            tenant_id = str(drs_token.claims.get("tid", ""))
            if drs_token.claims.get("mdm_tou_url"):
                self.log.info("Stage D: MDM terms of use accepted")
            else:
                self.log.info("Stage D: no MDM terms of use (mdm_tou_url absent)")
            self.log.info(f"Stage E: DRS discovery for '{domain}'")
            discovery = entra.drs_discover(domain)
            self.log.info("Stage F: creating the device key and the transport key")
            device_key, transport_key = new_key(), new_key()
            body = {
                "CertificateRequest": {"Type": "pkcs10", "Data": base64.b64encode(csr(device_key)).decode()},
                "TransportKey": transport_key_blob(transport_key.public_key()),
                "TargetDomain": domain,
                "DeviceType": "Windows",
                "OSVersion": OS_VERSION,
                "DeviceDisplayName": self.device.info.name,
                "JoinType": 0,
                "attributes": {"ReuseDevice": "true", "ReturnClientSid": "true"},
            }
            endpoint = discovery["DeviceJoinService"]["JoinEndpoint"]
            self.log.info(f"Stage G: device registration request to {endpoint} (JoinType 0)")
            reply = entra.join(endpoint, drs_token.access_token, body)
        state = self._complete(reply, device_key, transport_key, discovery, tenant_id, "AzureAdJoined")
        try:
            self.sign_in(username, password)
        except (EntraError, NetworkError, OSError) as e:  # joined all the same: the PRT comes at the next sign-in
            self.log.warning(f"The user signed in without a primary refresh token: {e}")
        return state

    def sign_in(self, username: str, password: str) -> prts.PrtRecord:
        """A user signs in on the joined device: CloudAP asks for a PRT with the password, signed with the
        device key, unwraps the session key with the transport key, keeps both sealed; WAM gets the account."""
        state = join_state(self.device)
        cert = self.device.stores.device_cert()
        if state is None or cert is None:
            raise JoinError("This device is not joined to Azure AD: run `dsregcmd /join` first")
        # the transport key is one this agent made at the join and wrote 0600: the RSA consistency check
        # (~35 ms, a fifth of a fleet onboarding's device CPU) proves nothing here (issue 20)
        transport = serialization.load_pem_private_key(
            self.device.transport_key_path.read_bytes(), None, unsafe_skip_rsa_key_validation=True
        )
        assert isinstance(transport, rsa.RSAPrivateKey)
        with self.network.client() as http:
            entra = self._client(http)
            realm = entra.user_realm(username)
            assertion = None
            if realm.get("account_type") == "Federated":  # CloudAP asks the federation service first
                assertion = saml_assertion(http, str(realm.get("federation_metadata_url", "")), username, password)
            self.log.info(
                f"Requesting a primary refresh token for '{username}' (scope openid aza ugs"
                f"{', SAML assertion' if assertion else ''})"
            )
            record = PrtClient(entra).acquire(
                str(state["TenantId"]),
                cert.cert(),
                cert.key(),
                transport,
                username=username,
                password=password,
                assertion=assertion,
            )
        prts.save(self.device, record)
        account = {
            "upn": username,
            "object_id": record.object_id,
            "tenant_id": record.tenant_id,
            "onprem_sid": record.onprem_sid,
        }
        self.device.dpapi.save(self.device.wam_path, account, WAM_PURPOSE)
        self.log.info(
            f"Primary refresh token acquired for '{username}': authority {record.authority}, expires "
            f"{datetime.fromtimestamp(record.expires_at, UTC):%Y-%m-%d %H:%M:%S} UTC"
        )
        return record

    def hybrid_join(self, tenant: str | None = None) -> dict[str, Any]:
        """Hybrid join (JoinType 6, managed; seed 002): the computer reads its tenant from the service
        connection point, writes its self-signed certificate to its AD object (Entra Connect syncs it),
        then proves its SID with that certificate's key. Before the sync the DRS does not know the device:
        the attempt is kept as pending (0x801c03f2, DirectoryError) for `dsregcmd /status`."""
        if join_state(self.device):
            raise JoinError("This device is already joined: run `dsregcmd /leave` first")
        info = self.device.info
        if not info.domain or not info.machine_sid or not info.ad_directory:
            raise JoinError("This device is not domain joined: create it with `cmglab device create --domain ...`")
        directory = LabDirectory(Path(info.ad_directory))
        sam = f"{info.name}$"
        try:
            computer = directory.computer(sam)
            scp = directory.scp()
        except (ADError, OSError, ValueError) as e:
            raise JoinError(f"the domain controller cannot be reached: {e}") from e
        if computer is None:
            raise JoinError(f"the computer account {sam} is not in {info.domain}: join the domain again")
        self.log.info(f"Stage A: service connection point {scp}")
        tenant = tenant or scp.get("azureADId") or scp.get("azureADName")
        if not tenant:
            raise JoinError("the service connection point names no tenant (azureADName/azureADId)")
        object_guid = str(computer["objectGUID"])
        user_cert = self.user_certificate(object_guid)
        der = cert_der(user_cert.cert())
        if base64.b64encode(der).decode() not in (computer.get("userCertificate") or []):
            directory.set_user_certificate(sam, der)
            self.log.info(
                f"Stage C: the self-signed certificate CN={object_guid} was written to the userCertificate "
                f"of {computer['distinguishedName']}; Entra Connect synchronises it"
            )
        with self.network.client() as http:
            entra = self._client(http)
            self.log.info(f"Stage E: DRS discovery for '{tenant}'")
            discovery = entra.drs_discover(tenant)
            tenant_id = discovery["TenantInfo"]["TenantId"]
            if "." in tenant:  # a domain name: a federated domain joins through its federation service
                realm = entra.user_realm(f"{info.name.lower()}@{tenant}")
                if realm.get("account_type") == "Federated":
                    reply, device_key, transport_key = self._federated_hybrid(
                        http, entra, realm, discovery, object_guid
                    )
                    self.device.attempt_path.unlink(missing_ok=True)
                    return self._complete(reply, device_key, transport_key, discovery, tenant_id, "Hybrid")
            device_key, transport_key = new_key(), new_key()
            sid = f"{info.machine_sid}.{datetime.now(UTC):%Y-%m-%d %H:%M:%S}Z"
            signed = user_cert.key().sign(sid.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
            body = {
                "CertificateRequest": {"Type": "pkcs10", "Data": base64.b64encode(csr(device_key)).decode()},
                "ServerAdJoinData": {
                    "TransportKey": transport_key_blob(transport_key.public_key()),
                    "TargetDomain": tenant_id,
                    "DeviceType": "Windows",
                    "OSVersion": OS_VERSION,
                    "DeviceDisplayName": info.name,
                    "TargetDomainId": tenant_id,
                    "SourceDomainController": f"dc.{info.domain}",
                    "ClientIdentity": {
                        "Type": "sha256signed",
                        "Sid": sid,
                        "SignedBlob": base64.b64encode(signed).decode(),
                    },
                },
                "JoinType": 6,
                "attributes": {"ReuseDevice": "true", "ReturnClientSid": "true"},
            }
            endpoint = discovery["DeviceJoinService"]["JoinEndpoint"]
            self.log.info(f"Stage G: hybrid registration request PUT {endpoint}{object_guid} (JoinType 6)")
            try:
                reply = entra.hybrid_join(endpoint, object_guid, body)
            except EntraError as e:
                self._pending(e, object_guid)
                raise
        self.device.attempt_path.unlink(missing_ok=True)
        return self._complete(reply, device_key, transport_key, discovery, tenant_id, "Hybrid")

    def _federated_hybrid(
        self, http: Any, entra: EntraClient, realm: dict[str, Any], discovery: dict[str, Any], object_guid: str
    ) -> tuple[dict[str, Any], rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
        """Seed 002, federated hybrid: the computer authenticates to the federation service with its machine
        account (windowstransport) and gets its on-premises claims (accounttype DJ, onpremobjectguid,
        primarysid); Entra turns them into a DRS token; the join (JoinType 6) needs no Entra Connect sync."""
        account = machine_account(self.device)
        if account is None:
            raise JoinError("this computer has no machine account secret: join the domain again")
        metadata = str(realm.get("federation_metadata_url", ""))
        self.log.info(
            f"Stage C: federated environment; the computer signs in at the federation service "
            f"(windowstransport, {metadata})"
        )
        assertion = windows_assertion(http, metadata, account["username"], account["password"])
        oauth = (discovery.get("AuthenticationService") or {}).get("OAuth2") or {}
        drs_token = entra.saml_token(
            oauth.get("TokenEndpoint") or f"{entra.login}/common/oauth2/token",
            client_id=BROKER_CLIENT_ID,
            resource=DRS_RESOURCE,
            assertion=assertion,
        )
        self.log.info(
            f"Stage D: DRS token with on-premises claims (account_type "
            f"{drs_token.claims.get('account_type')}, on_prem_id {drs_token.claims.get('on_prem_id')})"
        )
        device_key, transport_key = new_key(), new_key()
        info = self.device.info
        body = {
            "CertificateRequest": {"Type": "pkcs10", "Data": base64.b64encode(csr(device_key)).decode()},
            "TransportKey": transport_key_blob(transport_key.public_key()),
            "TargetDomain": discovery["TenantInfo"]["TenantId"],
            "DeviceType": "Windows",
            "OSVersion": OS_VERSION,
            "DeviceDisplayName": info.name,
            "JoinType": 6,
            "attributes": {"ReuseDevice": "true", "ReturnClientSid": "true"},
        }
        endpoint = discovery["DeviceJoinService"]["JoinEndpoint"]
        self.log.info(f"Stage G: federated hybrid registration request to {endpoint} (JoinType 6, {object_guid})")
        return entra.join(endpoint, drs_token.access_token, body), device_key, transport_key

    def _pending(self, e: EntraError, object_guid: str) -> None:
        """What Windows records for a failed sync join: the phase, its client and server codes."""
        missing = e.status == 400 and e.code == 700003
        attempt = {
            "Time": datetime.now(UTC).isoformat(),
            "ErrorPhase": "join",
            "RegistrationType": "sync",
            "ClientErrorCode": f"0x{DSREG_E_DIRECTORY_FAILURE if missing else DSREG_E_JOIN_FAILED:08x}",
            "ServerErrorCode": e.error_type or e.error,
            "ServerMessage": e.server_message,
            "HttpsStatus": e.status,
            "DeviceId": object_guid,
        }
        self.device.write_json(self.device.attempt_path, attempt)
        if missing:
            self.log.warning(
                f"Hybrid join pending: the device object {object_guid} is not in Azure AD yet (Entra "
                f"Connect has not synchronised the computer). Error {attempt['ClientErrorCode']}"
            )

    def user_certificate(self, object_guid: str | None = None) -> Any:
        """The self-signed `CN=<objectGUID>` certificate the computer writes to its AD userCertificate."""
        for sc in self.device.stores.certificates(MY):
            if sc.friendly_name == "userCertificate" and sc.has_key:
                cn = sc.cert().subject.rfc4514_string().removeprefix("CN=")
                if object_guid is None or cn == object_guid:
                    return sc
                self.device.stores.remove(MY, sc.thumbprint)
        guid = object_guid or str(uuid.uuid4())
        key = new_key()
        cert = self_signed(key, x509_name(guid), ekus=[], days=365)
        return self.device.stores.add(MY, cert, key, "userCertificate")

    def _complete(
        self,
        reply: dict[str, Any],
        device_key: rsa.RSAPrivateKey,
        transport_key: rsa.RSAPrivateKey,
        discovery: dict[str, Any],
        tenant_id: str,
        join_type: str,
    ) -> dict[str, Any]:
        raw = (reply.get("Certificate") or {}).get("RawBody")
        if not raw:
            raise JoinError("the DRS reply has no device certificate")
        cert = x509.load_der_x509_certificate(base64.b64decode(raw))
        device_id = cert.subject.rfc4514_string().split(",")[0].removeprefix("CN=")
        # Stage H: key first, certificate, then the state that says "joined"
        write_private(
            self.device.transport_key_path,
            transport_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        self.device.stores.add(MY, cert, device_key, "MS-Organization-Access device")
        info = discovery.get("TenantInfo") or {}
        oauth = (discovery.get("AuthenticationService") or {}).get("OAuth2") or {}
        state = {
            "JoinType": join_type,
            "DeviceId": device_id,
            "Thumbprint": sha1_thumbprint(cert),
            "TenantId": tenant_id or info.get("TenantId"),
            "TenantName": info.get("DisplayName", ""),
            "TenantDomain": info.get("TenantName", ""),
            "AuthCodeUrl": oauth.get("AuthCodeEndpoint", ""),
            "AccessTokenUrl": oauth.get("TokenEndpoint", ""),
            "JoinSrvUrl": (discovery.get("DeviceJoinService") or {}).get("JoinEndpoint", ""),
            "KeySrvUrl": (discovery.get("KeyProvisioningService") or {}).get("KeyProvisionEndpoint", ""),
            "JoinedAt": datetime.now(UTC).isoformat(),
            "User": (reply.get("User") or {}).get("Upn"),
            "Host": socket.gethostname(),
        }
        self.device.write_json(self.device.join_path, state)
        self.log.info(f"Stage H: device registration complete: DeviceId {device_id}, thumbprint {state['Thumbprint']}")
        return state

    def leave(self) -> dict[str, Any] | None:
        """Delete the device object (DRS, device certificate at TLS), then forget the join locally."""
        state = join_state(self.device)
        if state is None:
            return None
        cert = self.device.stores.device_cert()
        error: Exception | None = None
        if cert is not None:
            try:
                with self.network.client(client_cert=cert) as http:
                    self._client(http).delete(state["JoinSrvUrl"], state["DeviceId"])
            except (EntraError, OSError, Exception) as e:  # the local leave happens regardless
                error = e
        self.forget(state)
        if error is not None:
            self.log.warning(f"The device object could not be deleted in Azure AD: {error}")
        return state

    def forget(self, state: dict[str, Any]) -> None:
        cert = self.device.stores.device_cert()
        if cert is not None:
            self.device.stores.remove(MY, cert.thumbprint)
        for path in (
            self.device.join_path,
            self.device.transport_key_path,
            self.device.wam_path,
            self.device.attempt_path,
        ):
            path.unlink(missing_ok=True)
        prts.forget(self.device)
