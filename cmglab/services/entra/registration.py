"""The Device Registration Service's flows (docs/protocol-notes.md, Entra §3): discovery, join/register
(POST), hybrid join of a device Entra Connect synced (PUT), delete with the device certificate
(DELETE), the nonce service, and the sync that pre-creates hybrid devices.

Every request is checked in full (token, JSON, CSR, transport key, signed SID) and the certificate
issued before the device row is written, in one transaction: a failed request leaves nothing behind.
Runs in a worker thread; raises `DRSError`.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import jwt
from cryptography import x509
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import delete

from cmglab.core.labconfig import DRS_RESOURCE
from cmglab.pki.builders import sha1_thumbprint
from cmglab.services.entra import drs
from cmglab.services.entra import store as st
from cmglab.services.entra.discovery import drs_discovery
from cmglab.services.entra.errors import DRSError
from cmglab.services.entra.tokens import Signer
from cmglab.wire import jsonlimits

DRS_APP_ID = "01cb2876-7ebd-4aa4-9cc9-d28bd4d359a9"
JOIN_TRUST = {0: "AzureAd", 8: "AzureAd", 4: "Workplace"}  # JoinType -> deviceTrustType
HYBRID_JOIN = 6
ADMINISTRATORS = "S-1-5-32-544"
# the role and group whose members a joined device makes local administrators (their S-1-12-1 SIDs)
_ADMIN_OBJECTS = ("Global Administrator", "Microsoft Entra Joined Device Local Administrator")
# Entra's device displayName limit (Graph: "maximum length is 256 characters"); without it a join
# stored whatever size the body had
DISPLAY_NAME_MAX = 256
# the join's own statements in plain SQL (its unit is `Store.plain`): the new device row (the columns the join sets;
# onprem_sid and user_certificate stay NULL as in the ORM's insert) and the user's devices against the quota
DEVICE_INSERT_SQL = (
    "INSERT INTO devices (object_id, device_id, tenant_id, display_name, device_type, os_version, trust_type, "
    "join_type, owner_id, cert_thumbprint, transport_key, auth_methods, created_at, registered_at, enabled) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
OWNED_SQL = "SELECT count(*) FROM devices WHERE owner_id = ?"
# the joining user's row locked until the join commits (PostgreSQL: a row lock; SQLite: the write lock), so that a
# user's joins sent at once count each other's devices: without it each counted, then inserted, past the quota
LOCK_OWNER_SQL = "UPDATE users SET enabled = enabled WHERE object_id = ?"
M = TypeVar("M", bound=BaseModel)


class CertificateRequest(BaseModel):
    Type: str = "pkcs10"
    Data: str


class JoinRequest(BaseModel):
    CertificateRequest: CertificateRequest
    TransportKey: str
    TargetDomain: str | None = None
    DeviceType: str = "Windows"
    OSVersion: str = ""
    DeviceDisplayName: str = Field("", max_length=DISPLAY_NAME_MAX)
    JoinType: int = 0


class ClientIdentity(BaseModel):
    Type: str
    Sid: str
    SignedBlob: str


class ServerAdJoinData(BaseModel):
    TransportKey: str
    TargetDomain: str | None = None
    TargetDomainId: str | None = None
    DeviceType: str = "Windows"
    OSVersion: str = ""
    DeviceDisplayName: str = Field("", max_length=DISPLAY_NAME_MAX)
    ClientIdentity: ClientIdentity


class HybridJoinRequest(BaseModel):
    CertificateRequest: CertificateRequest
    ServerAdJoinData: ServerAdJoinData
    JoinType: int = HYBRID_JOIN


def _parse(model: type[M], body: bytes) -> M:
    try:
        data = jsonlimits.loads(body)  # nesting bounded before parsing: TooDeep is a ValueError (400)
    except (ValueError, UnicodeDecodeError) as e:
        raise DRSError(400, "InvalidParameter", 90014, "The request body is not valid JSON.") from e
    try:
        return model.model_validate(data)
    except ValidationError as e:
        fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors())
        raise DRSError(
            400, "InvalidParameter", 90014, f"The request is missing or has invalid fields: {fields}."
        ) from e


@functools.lru_cache(maxsize=256)
def _admin_sids(tenant_id: str) -> tuple[str, ...]:
    """The tenant's administrator role and group as SIDs (derived from the tenant ID: the same for every join)."""
    return tuple(drs.sid_from_guid(str(uuid.uuid5(uuid.UUID(tenant_id), name))) for name in _ADMIN_OBJECTS)


def _membership(tenant_id: str) -> list[dict[str, Any]]:
    return [{"LocalSID": ADMINISTRATORS, "AddSIDs": list(_admin_sids(tenant_id))}]


def _reply(cert: drs.DeviceCertificate, tenant_id: str, upn: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"Certificate": {"Thumbprint": cert.thumbprint, "RawBody": cert.der_b64}}
    if upn:
        out["User"] = {"Upn": upn}
    out["MembershipChanges"] = _membership(tenant_id)
    return out


class Registration:
    def __init__(self, store: st.Store, signer: Signer, ca: drs.DeviceCA) -> None:
        self.store, self.signer, self.ca = store, signer, ca
        self._enabled = store.db.bind(st.Device.enabled)  # a Boolean as the ORM writes it on this database

    # -- discovery and nonces ------------------------------------------------------------------
    def discover(self, key: str, *, drs_url: str, login_url: str) -> dict[str, Any]:
        with self.store.plain() as u:  # the tenant and domain from the directory cache, no session
            tenant = st.tenant_by_key(u, key)
            if tenant is None:
                raise DRSError(404, "DirectoryError", 90002, f"Tenant '{key}' not found.")
            domain = st.domain_by_name(u, key)
            return drs_discovery(
                drs_url,
                login_url,
                tenant.tenant_id,
                tenant.display_name,
                domain.name if domain else tenant.initial_domain,
                bool(domain and domain.federated),
            )

    def nonce(self, tenant_id: str, lifetime: int) -> dict[str, Any]:
        with self.store.session() as s:
            if st.tenant_by_key(s, tenant_id) is None:
                raise DRSError(404, "DirectoryError", 90002, f"Tenant '{tenant_id}' not found.")
            value = self.store.issue_nonce(lifetime)
        return {
            "ReponseStatus": {
                "message": "Successfully created a nonce",
                "traceId": str(uuid.uuid4()),
                "time": datetime.now(UTC).strftime("%m-%d-%Y %H:%M:%SZ"),
            },
            "Value": value,
        }

    # -- join / register -----------------------------------------------------------------------
    def _bearer(self, authorization: str | None) -> dict[str, Any]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise DRSError(401, "AuthenticationError", 50027, "A bearer token for the DRS is required.")
        try:
            return self.signer.verify(token.strip(), audience=[DRS_RESOURCE, DRS_APP_ID])
        except jwt.InvalidAudienceError as e:
            raise DRSError(
                401, "AuthenticationError", 50027, f"Invalid JWT token: the audience is not {DRS_RESOURCE}."
            ) from e
        except jwt.ExpiredSignatureError as e:
            raise DRSError(401, "AuthenticationError", 50027, "Invalid JWT token: the token has expired.") from e
        except jwt.PyJWTError as e:
            raise DRSError(401, "AuthenticationError", 50027, f"Invalid JWT token: {e}.") from e

    def join(self, authorization: str | None, body: bytes) -> dict[str, Any]:
        claims = self._bearer(authorization)
        if claims.get("account_type") == "DJ":  # federated hybrid join: the computer's token from its STS claims
            return self._federated_hybrid(claims, body)
        if claims.get("idtyp") != "user":
            raise DRSError(401, "AuthenticationError", 50027, "Invalid JWT token: it does not identify a user.")
        req = _parse(JoinRequest, body)
        trust = JOIN_TRUST.get(req.JoinType)
        if trust is None:
            raise DRSError(
                400,
                "InvalidParameter",
                90014,
                f"JoinType {req.JoinType} is not accepted here (hybrid join is PUT "
                "/EnrollmentServer/device/<id> with the signed SID).",
            )
        if req.CertificateRequest.Type.lower() != "pkcs10":
            raise DRSError(400, "InvalidParameter", 90014, "CertificateRequest.Type must be pkcs10.")
        device_key = drs.check_csr(req.CertificateRequest.Data)
        transport = drs.parse_transport_key(req.TransportKey)
        with self.store.plain() as u:  # plain SQL: this unit's reads and its one insert are fixed statements
            tenant, user = st.tenant_by_id(u, claims["tid"]), st.user_facts(u, str(claims.get("oid", "")))
            if tenant is None or user is None or not user.enabled:
                raise DRSError(401, "AuthenticationError", 50034, "The user of the token does not exist.")
            quota = self._quota(tenant.tenant_id)
            self._within_quota(u, quota, user.object_id)
            device_id = st.new_guid()
            cert = self.ca.issue(
                device_key,
                device_id=device_id,
                user_id=user.object_id,
                tenant_id=tenant.tenant_id,
                joined=trust == "AzureAd",
                region=tenant.region,
            )
            # counted again under the lock, after the signature (the lock is never held across it); the check above
            # refuses an ordinary over-quota join before any signing. Without a quota (Unlimited) there is nothing to
            # count: no lock, and the join writes its device row only (the users row's write cost ~0.01 ms of CPU)
            if quota is not None:
                u.run(LOCK_OWNER_SQL, (user.object_id,))
                self._within_quota(u, quota, user.object_id)
            u.run(
                DEVICE_INSERT_SQL,
                (
                    st.new_guid(),  # object_id
                    device_id,
                    tenant.tenant_id,
                    req.DeviceDisplayName,
                    req.DeviceType,
                    req.OSVersion,
                    trust,
                    req.JoinType,
                    user.object_id,  # owner_id
                    cert.thumbprint,
                    drs.spki(transport),
                    " ".join(claims.get("amr", [])),
                    st.now(),  # created_at
                    st.now(),  # registered_at
                    self._enabled(True),
                ),
            )
            return _reply(cert, tenant.tenant_id, user.upn)

    def _quota(self, tenant_id: str) -> int | None:
        """Device settings "Maximum number of devices per user" (None: Unlimited)."""
        configured = self.store.config.tenant(tenant_id)
        return configured.max_devices_per_user if configured is not None else 50

    @staticmethod
    def _within_quota(s: st.Unit, quota: int | None, user_id: str) -> None:
        """A user's joined and registered devices against the tenant's quota."""
        if quota is None:  # Unlimited
            return
        found = st.sql_one(s, OWNED_SQL, (user_id,))
        owned = found[0] if found else 0
        if owned >= quota:
            raise DRSError(
                400,
                "AuthorizationError",
                240001,
                "The maximum number of devices that can be joined to the workplace by the user has been "
                f"reached ({quota}).",
            )

    def _federated_hybrid(self, claims: dict[str, Any], body: bytes) -> dict[str, Any]:
        """JoinType 6 with a DJ token (seed 002, federated hybrid): the device object is made from the
        token's on-premises claims (objectGUID, computer SID), no Entra Connect sync needed."""
        req = _parse(JoinRequest, body)
        if req.JoinType != HYBRID_JOIN:
            raise DRSError(400, "InvalidParameter", 90014, "A domain computer's token joins with JoinType 6 only.")
        device_key = drs.check_csr(req.CertificateRequest.Data)
        transport = drs.parse_transport_key(req.TransportKey)
        device_id, sid = str(claims.get("on_prem_id", "")).lower(), str(claims.get("primary_sid", ""))
        with self.store.session() as s:
            tenant = s.get(st.Tenant, claims.get("tid", ""))
            if tenant is None or not device_id:
                raise DRSError(401, "AuthenticationError", 50027, "Invalid JWT token: no tenant or on_prem_id.")
            device = st.device_by_id(s, device_id)
            if device is not None and device.tenant_id != tenant.tenant_id:
                raise DRSError(
                    400, "DirectoryError", 700003, f"The device object by the given id ({device_id}) is not found."
                )
            cert = self.ca.issue(
                device_key,
                device_id=device_id,
                user_id=None,
                tenant_id=tenant.tenant_id,
                joined=True,
                region=tenant.region,
            )
            if device is None:
                device = st.Device(
                    object_id=st.new_guid(),
                    device_id=device_id,
                    tenant_id=tenant.tenant_id,
                    trust_type="ServerAd",
                    join_type=HYBRID_JOIN,
                    onprem_sid=sid,
                )
                s.add(device)
            device.join_type, device.onprem_sid, device.cert_thumbprint = HYBRID_JOIN, sid, cert.thumbprint
            device.transport_key, device.registered_at = drs.spki(transport), st.now()
            device.display_name, device.device_type = req.DeviceDisplayName, req.DeviceType
            device.os_version, device.auth_methods = req.OSVersion, " ".join(claims.get("amr", []))
            return _reply(cert, tenant.tenant_id, None)

    def hybrid_join(self, device_id: str, body: bytes) -> dict[str, Any]:
        req = _parse(HybridJoinRequest, body)
        data = req.ServerAdJoinData
        if req.JoinType != HYBRID_JOIN:
            raise DRSError(400, "InvalidParameter", 90014, "JoinType must be 6 (hybrid join) on this request.")
        device_key = drs.check_csr(req.CertificateRequest.Data)
        transport = drs.parse_transport_key(data.TransportKey)
        with self.store.session() as s:
            device = st.device_by_id(s, device_id)
            if device is None or device.user_certificate is None or device.onprem_sid is None:
                raise DRSError(
                    400,
                    "DirectoryError",
                    700003,
                    f"The device object by the given id ({device_id}) is not found.",
                    subcode="error_missing_device",
                )
            drs.verify_signed_sid(
                data.ClientIdentity.Sid,
                data.ClientIdentity.SignedBlob,
                device.user_certificate,
                device.onprem_sid,
                datetime.now(UTC),
            )
            tenant = s.get(st.Tenant, device.tenant_id)
            assert tenant is not None
            target = data.TargetDomainId or data.TargetDomain
            found = st.tenant_by_key(s, target) if target else None
            if target and (found is None or found.tenant_id != tenant.tenant_id):
                raise DRSError(
                    400, "InvalidParameter", 90002, f"TargetDomain '{target}' is not the tenant of the device."
                )
            cert = self.ca.issue(
                device_key,
                device_id=device.device_id,
                user_id=None,
                tenant_id=tenant.tenant_id,
                joined=True,
                region=tenant.region,
            )
            device.join_type, device.cert_thumbprint = HYBRID_JOIN, cert.thumbprint
            device.transport_key, device.registered_at = drs.spki(transport), st.now()
            device.display_name = data.DeviceDisplayName or device.display_name
            device.device_type, device.os_version = data.DeviceType, data.OSVersion
            return _reply(cert, tenant.tenant_id, None)

    def delete(self, device_id: str, cert: x509.Certificate | None) -> dict[str, Any]:
        """Unjoin: the device proves itself with its certificate at TLS (no bearer)."""
        if cert is None:
            raise DRSError(
                401,
                "AuthenticationError",
                50155,
                "Device authentication failed: present the device certificate (TLS client auth).",
            )
        if not self.ca.issued(cert, datetime.now(UTC)) or drs.device_id_of(cert) != device_id.lower():
            raise DRSError(
                403, "AuthenticationError", 50155, "Device authentication failed: the certificate is not this device's."
            )
        with self.store.session() as s:
            device = st.device_by_id(s, device_id)
            if device is None or device.cert_thumbprint != sha1_thumbprint(cert):
                raise DRSError(
                    404, "DirectoryError", 700003, f"The device object by the given id ({device_id}) is not found."
                )
            s.execute(delete(st.RefreshToken).where(st.RefreshToken.device_id == device.device_id))
            s.delete(device)
        return {}
