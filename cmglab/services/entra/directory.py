"""Directory administration behind `/_lab/`: list and add tenants, users, apps and devices. Adding a
device is what Entra Connect does for a domain-joined computer with a userCertificate: it pre-creates
the hybrid device object (deviceId = objectGUID, the computer SID, the certificate; trust ServerAd).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

from cryptography import x509
from pydantic import BaseModel
from sqlalchemy import select

from cmglab.services.entra import store as st


class DirectoryError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DomainIn(BaseModel):
    name: str
    federated: bool = False


class TenantIn(BaseModel):
    tenant_id: str | None = None
    display_name: str
    initial_domain: str
    domains: list[DomainIn] = []
    region: str = "NA"
    onboarded: bool = True


class UserIn(BaseModel):
    tenant: str  # ID or domain
    upn: str
    password: str
    object_id: str | None = None
    display_name: str = ""
    onprem_sid: str | None = None


class AppIn(BaseModel):
    app_id: str | None = None
    display_name: str
    identifier_uri: str | None = None
    client_secret: str | None = None
    public_client: bool = True
    access_token_version: int = 1


class SyncedDeviceIn(BaseModel):
    tenant: str
    device_id: str  # the computer's objectGUID
    onprem_sid: str
    user_certificate: str  # base64 DER of the AD userCertificate
    display_name: str = ""


def _guid(value: str | None) -> str:
    try:
        return str(uuid.UUID(value)) if value else st.new_guid()
    except ValueError as e:
        raise DirectoryError(422, f"{value!r} is not a GUID") from e


def tenant_view(t: st.Tenant, domains: list[st.Domain]) -> dict[str, Any]:
    return {
        "tenant_id": t.tenant_id,
        "display_name": t.display_name,
        "initial_domain": t.initial_domain,
        "region": t.region,
        "onboarded": t.onboarded,
        "domains": [{"name": d.name, "federated": d.federated} for d in domains],
    }


def user_view(u: st.User) -> dict[str, Any]:
    return {
        "object_id": u.object_id,
        "tenant_id": u.tenant_id,
        "upn": u.upn,
        "display_name": u.display_name,
        "onprem_sid": u.onprem_sid,
        "enabled": u.enabled,
    }


def app_view(a: st.App) -> dict[str, Any]:
    return {
        "app_id": a.app_id,
        "display_name": a.display_name,
        "identifier_uri": a.identifier_uri,
        "public_client": a.public_client,
        "has_secret": a.secret_hash is not None,
        "access_token_version": a.access_token_version,
    }


def device_view(d: st.Device) -> dict[str, Any]:
    return {
        "object_id": d.object_id,
        "device_id": d.device_id,
        "tenant_id": d.tenant_id,
        "display_name": d.display_name,
        "device_type": d.device_type,
        "os_version": d.os_version,
        "trust_type": d.trust_type,
        "join_type": d.join_type,
        "owner_id": d.owner_id,
        "onprem_sid": d.onprem_sid,
        "cert_thumbprint": d.cert_thumbprint,
        "registration_auth_methods": d.auth_methods.split(),
        "created_at": d.created_at,
        "registered_at": d.registered_at,
        "enabled": d.enabled,
    }


class Directory:
    def __init__(self, store: st.Store) -> None:
        self.store = store

    def _tenant(self, s: Any, key: str) -> st.TenantInfo:
        tenant = st.tenant_by_key(s, key)
        if tenant is None:
            raise DirectoryError(404, f"no tenant {key!r}")
        return tenant

    def tenants(self) -> list[dict[str, Any]]:
        with self.store.session() as s:
            return [
                tenant_view(t, list(s.scalars(select(st.Domain).where(st.Domain.tenant_id == t.tenant_id))))
                for t in s.scalars(select(st.Tenant).order_by(st.Tenant.display_name))
            ]

    def add_tenant(self, t: TenantIn) -> dict[str, Any]:
        tenant_id = _guid(t.tenant_id)
        names = {d.name.lower(): d.federated for d in t.domains}
        names.setdefault(t.initial_domain.lower(), False)
        with self.store.session() as s:
            if s.get(st.Tenant, tenant_id) is not None or any(s.get(st.Domain, n) for n in names):
                raise DirectoryError(409, "that tenant or one of its domains exists")
            st.new_generation(s)  # every process's cache of the directory starts over
            tenant = st.Tenant(
                tenant_id=tenant_id,
                display_name=t.display_name,
                initial_domain=t.initial_domain,
                region=t.region,
                onboarded=t.onboarded,
            )
            domains = [st.Domain(name=n, tenant_id=tenant_id, federated=f) for n, f in names.items()]
            s.add(tenant)
            s.flush()
            s.add_all(domains)
            return tenant_view(tenant, domains)

    def users(self, tenant: str | None) -> list[dict[str, Any]]:
        with self.store.session() as s:
            query = select(st.User).order_by(st.User.upn)
            if tenant:
                query = query.where(st.User.tenant_id == self._tenant(s, tenant).tenant_id)
            return [user_view(u) for u in s.scalars(query)]

    def add_user(self, u: UserIn) -> dict[str, Any]:
        with self.store.session() as s:
            tenant = self._tenant(s, u.tenant)
            domain = s.get(st.Domain, u.upn.rpartition("@")[2].lower())
            if domain is None or domain.tenant_id != tenant.tenant_id:
                raise DirectoryError(422, f"the UPN suffix of {u.upn} is not a domain of tenant {tenant.tenant_id}")
            if st.user_by_upn(s, u.upn) is not None:
                raise DirectoryError(409, f"user {u.upn} exists")
            user = st.User(
                object_id=_guid(u.object_id),
                tenant_id=tenant.tenant_id,
                upn=u.upn.lower(),
                display_name=u.display_name,
                password_hash=st.hash_secret(u.password),
                onprem_sid=u.onprem_sid,
            )
            s.add(user)
            s.flush()
            return user_view(user)

    def apps(self) -> list[dict[str, Any]]:
        with self.store.session() as s:
            return [app_view(a) for a in s.scalars(select(st.App).order_by(st.App.display_name))]

    def add_app(self, a: AppIn) -> dict[str, Any]:
        with self.store.session() as s:
            app_id = _guid(a.app_id)
            if s.get(st.App, app_id) is not None or (a.identifier_uri and st.app_by_resource(s, a.identifier_uri)):
                raise DirectoryError(409, "an app with that ID or identifier URI exists")
            st.new_generation(s)
            app = st.App(
                app_id=app_id,
                display_name=a.display_name,
                identifier_uri=a.identifier_uri,
                secret_hash=st.hash_secret(a.client_secret) if a.client_secret else None,
                public_client=a.public_client,
                access_token_version=a.access_token_version,
            )
            s.add(app)
            s.flush()
            return app_view(app)

    def devices(self, tenant: str | None) -> list[dict[str, Any]]:
        with self.store.session() as s:
            query = select(st.Device).order_by(st.Device.created_at)
            if tenant:
                query = query.where(st.Device.tenant_id == self._tenant(s, tenant).tenant_id)
            return [device_view(d) for d in s.scalars(query)]

    def sync_device(self, d: SyncedDeviceIn) -> dict[str, Any]:
        try:
            der = base64.b64decode(d.user_certificate, validate=True)
            x509.load_der_x509_certificate(der)
        except (binascii.Error, ValueError) as e:
            raise DirectoryError(422, f"user_certificate is not a base64 DER certificate: {e}") from e
        device_id = _guid(d.device_id)
        with self.store.session() as s:
            tenant = self._tenant(s, d.tenant)
            if st.device_by_id(s, device_id) is not None:
                raise DirectoryError(409, f"device {device_id} exists")
            device = st.Device(
                object_id=st.new_guid(),
                device_id=device_id,
                tenant_id=tenant.tenant_id,
                display_name=d.display_name,
                trust_type="ServerAd",
                join_type=None,
                onprem_sid=d.onprem_sid,
                user_certificate=der,
            )
            s.add(device)
            s.flush()
            return device_view(device)
