"""The site database slice the MP needs (SQLAlchemy): site settings, onboarded tenants, clients,
issued tokens (records only, never the token), bulk registration token records, policies, DDRs.

In this lab the site server's database is the MP process' database: `cmglab bulk-token` writes into
it directly, as BulkRegistrationTokenTool.exe writes into the real site database.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Boolean, DateTime, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cmglab.core import labconfig
from cmglab.core.labconfig import SiteSettings, SiteSettingsChange
from cmglab.runtime import db
from cmglab.runtime.lab import Lab
from cmglab.services.management_point import settings_watch, units
from cmglab.services.management_point.admission import APPROVED, NOT_APPROVED
from cmglab.services.management_point.sealing import Sealer, site_key
from cmglab.wire.entra_tokens import EntraPolicy, TenantAudience
from cmglab.wire.kinds import ConflictStatus

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    v = as_utc(value)
    return v.strftime("%Y-%m-%dT%H:%M:%SZ") if v else None


class Base(DeclarativeBase):
    pass


class SiteSetting(Base):
    """One field of SiteSettings (its name, its value as JSON); the store reads and writes the model whole."""

    __tablename__ = "site_settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # JSON


class Tenant(Base):
    """An Entra tenant onboarded to the site (Cloud Services > Azure Services)."""

    __tablename__ = "tenants"
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    client_app_id: Mapped[str] = mapped_column(String(36))
    server_app_id: Mapped[str] = mapped_column(String(36))
    resource_uri: Mapped[str] = mapped_column(String(256))
    onboarded: Mapped[bool] = mapped_column(Boolean, default=True)


class Client(Base):
    # What the client sends of itself (names, agent identity and version) is kept as Text: SQLite never
    # enforced a VARCHAR length, PostgreSQL refuses a longer value, and the MP does not judge these.
    __tablename__ = "clients"
    sms_id: Mapped[str] = mapped_column(String(48), primary_key=True)  # GUID:<UPPER>
    netbios_name: Mapped[str] = mapped_column(Text, default="")
    fqdn: Mapped[str] = mapped_column(Text, default="")
    signing_cert: Mapped[str] = mapped_column(Text)  # hex DER (self-signed SMS signing)
    encryption_cert: Mapped[str] = mapped_column(Text)  # hex DER (SMS encryption)
    signing_thumbprint: Mapped[str] = mapped_column(String(40), index=True)
    pki_thumbprint: Mapped[str | None] = mapped_column(String(40), index=True, nullable=True)
    # a RegistrationKind (cmglab/wire/kinds.py): self-signed | domain | pki | aad | bulk | token
    auth_kind: Mapped[str] = mapped_column(String(16))
    domain_account: Mapped[str | None] = mapped_column(String(128), nullable=True)
    aad_device_id: Mapped[str | None] = mapped_column(String(36), index=True, nullable=True)
    aad_tenant_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    bulk_token_guid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    approval: Mapped[int] = mapped_column(Integer, default=NOT_APPROVED)
    internet: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_identity: Mapped[str] = mapped_column(Text, default="")
    agent_version: Mapped[str] = mapped_column(Text, default="")
    registered_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_policy_request: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sms_id": self.sms_id,
            "netbios_name": self.netbios_name,
            "fqdn": self.fqdn,
            "signing_thumbprint": self.signing_thumbprint,
            "pki_thumbprint": self.pki_thumbprint,
            "auth_kind": self.auth_kind,
            "domain_account": self.domain_account,
            "aad_device_id": self.aad_device_id,
            "aad_tenant_id": self.aad_tenant_id,
            "bulk_token_guid": self.bulk_token_guid,
            "approval": self.approval,
            "internet": self.internet,
            "agent_identity": self.agent_identity,
            "agent_version": self.agent_version,
            "registered_at": iso(self.registered_at),
            "updated_at": iso(self.updated_at),
            "last_policy_request": iso(self.last_policy_request),
        }


class IssuedToken(Base):
    """A token the site issued: its unique ID, kind and binding, never the token itself."""

    __tablename__ = "issued_tokens"
    unique_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # ccm | client
    token_type: Mapped[str] = mapped_column(String(16))  # UDA | Device | ClientToken
    proof: Mapped[str] = mapped_column(String(24))  # AAD | BulkRegistration | ClientToken | Certificate | Registration
    sms_id: Mapped[str | None] = mapped_column(String(48), index=True, nullable=True)
    cert_thumbprint: Mapped[str | None] = mapped_column(String(40), nullable=True)
    bulk_token_guid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    aad_tenant_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    aad_device_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    aad_user_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    issued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)

    def as_dict(self) -> dict[str, Any]:
        return {
            "unique_id": self.unique_id,
            "kind": self.kind,
            "token_type": self.token_type,
            "proof": self.proof,
            "sms_id": self.sms_id,
            "cert_thumbprint": self.cert_thumbprint,
            "bulk_token_guid": self.bulk_token_guid,
            "aad_tenant_id": self.aad_tenant_id,
            "aad_device_id": self.aad_device_id,
            "aad_user_id": self.aad_user_id,
            "issued_at": iso(self.issued_at),
            "expires_at": iso(self.expires_at),
        }


class BulkToken(Base):
    """What the site keeps of a bulk registration token: GUID and lifetime, never the token."""

    __tablename__ = "bulk_tokens"
    guid: Mapped[str] = mapped_column(String(36), primary_key=True)
    lifetime_minutes: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[datetime] = mapped_column(DateTime)
    not_after: Mapped[datetime] = mapped_column(DateTime)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    blocked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "guid": self.guid,
            "lifetime_minutes": self.lifetime_minutes,
            "not_before": iso(self.not_before),
            "not_after": iso(self.not_after),
            "blocked": self.blocked,
            "created_at": iso(self.created_at),
            "blocked_at": iso(self.blocked_at),
            "expired": as_utc(self.not_after) < datetime.now(UTC),  # type: ignore[operator]
        }


class ConflictRecord(Base):
    """A registration that proposed a registered SMSID without being its owner (Monitoring > Conflicting
    Records). `status`: pending (held for the admin), new (a new record was created: `new_sms_id`), merge
    (the admin said it is the same machine: it updates the record), block (refused)."""

    __tablename__ = "conflicting_records"
    # one record per (SMSID proposed, key): two copies of one request at once race on it, and the store's
    # retry then finds the row the other wrote
    __table_args__ = (UniqueConstraint("sms_id", "signing_thumbprint"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sms_id: Mapped[str] = mapped_column(String(48), index=True)  # the registered SMSID it proposed
    signing_thumbprint: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    netbios_name: Mapped[str] = mapped_column(Text, default="")
    aad_device_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    pki_thumbprint: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=ConflictStatus.PENDING)  # a ConflictStatus
    new_sms_id: Mapped[str | None] = mapped_column(String(48), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    detected_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sms_id": self.sms_id,
            "signing_thumbprint": self.signing_thumbprint,
            "kind": self.kind,
            "netbios_name": self.netbios_name,
            "aad_device_id": self.aad_device_id,
            "pki_thumbprint": self.pki_thumbprint,
            "status": self.status,
            "new_sms_id": self.new_sms_id,
            "attempts": self.attempts,
            "detected_at": iso(self.detected_at),
            "last_seen": iso(self.last_seen),
            "resolved_at": iso(self.resolved_at),
        }


class Policy(Base):
    __tablename__ = "policies"
    policy_id: Mapped[str] = mapped_column(String(40), primary_key=True)  # {guid}
    version: Mapped[str] = mapped_column(String(16), default="2.00")
    category: Mapped[str] = mapped_column(String(64))
    policy_type: Mapped[str] = mapped_column(String(16), default="Machine")
    flags: Mapped[int] = mapped_column(Integer, default=0)
    assignment_id: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)  # policy XML

    @property
    def secret(self) -> bool:
        return bool(self.flags & 4)


class Ddr(Base):
    __tablename__ = "ddrs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sms_id: Mapped[str | None] = mapped_column(String(48), index=True, nullable=True)  # a GUID: SMSID or none
    netbios_name: Mapped[str] = mapped_column(Text, default="")  # as the report says (see Client)
    signed: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    body: Mapped[str] = mapped_column(Text)


# plain SQL: SQLAlchemy's statement compilation and cache-key work cost more than the query itself
_SETTINGS_SQL = f"SELECT name, value FROM {SiteSetting.__tablename__} ORDER BY name"


_TENANTS_SQL = f"SELECT tenant_id, resource_uri, server_app_id, onboarded FROM {Tenant.__tablename__} ORDER BY 1"


@functools.lru_cache(maxsize=8)
def _entra_policy_of(rows: tuple[tuple[str, str, str], ...], require_device: bool) -> EntraPolicy:
    """The Entra-token rule of the onboarded tenants' rows (tenant ID, resource URI, server app ID): immutable, so
    one rule serves every request until the rows change."""
    return EntraPolicy({t.lower(): TenantAudience(r, a) for t, r, a in rows}, require_device)


def _settings_of(rows: Iterable[Sequence[Any]]) -> SiteSettings | None:
    """The settings of the site_settings rows: parsed and validated again only when their text changed
    (a copy each time: the cached one stays as read)."""
    parsed = _parsed_rows(rows)
    return parsed.model_copy() if parsed is not None else None


def _parsed_rows(rows: Iterable[Sequence[Any]]) -> SiteSettings | None:
    """The settings of the site_settings rows, as parsed (shared: never handed out without a copy)."""
    return _parsed_settings(tuple((str(name), str(value)) for name, value in rows))


@functools.lru_cache(maxsize=8)
def _parsed_settings(rows: tuple[tuple[str, str], ...]) -> SiteSettings | None:
    known = {name: json.loads(value) for name, value in rows if name in SiteSettings.model_fields}
    return SiteSettings.model_validate(known) if known else None


_WATCH_OPENING = threading.Lock()  # opening a store's settings watch (once per store: never contended)


class Store(db.Store):
    """The MP's database. `fill` seeds the site settings, tenants and policies from the lab config.

    lab.json is the single source of the site settings and of which tenants are onboarded: every start
    (and reset) writes them over the database's rows, so an edit of lab.json applies on restart, and
    `cmglab site set` / `cmglab tenant onboard` write lab.json and the row of what they name (live)."""

    def __init__(
        self,
        lab: Lab,
        url: str | None = None,
        policy_factory: Callable[[Lab], list[Policy]] | None = None,
        seed: bool = True,
    ) -> None:
        url = url or lab.database_url("management-point")
        super().__init__(db.Database(url, Base, "management-point"))
        self.lab = lab
        self._url = url
        self.sealer = Sealer(site_key(lab.dir))
        self.policy_factory = policy_factory
        self.statements = units.Statements(
            self.db,
            lambda rows: _settings_of(rows) or self.lab.config.site.site_settings(),
            when=self.db.bind(Client.__table__.c.updated_at),
            flag=self.db.bind(Client.__table__.c.internet),
        )
        if seed:  # False: a reader of what the running site holds (`cmglab site show`)
            self.seed()

    def retrying(self, work: Callable[[Session], T], on_race: Callable[[], None] | None = None) -> T:
        """`work` in one transaction. Two copies of one request at once (a client's retry racing its first
        attempt) can both find no row, and one insert then loses on the primary key: that one runs again, in
        a new transaction, and finds the row the other made."""
        try:
            with self.session() as s:
                return work(s)
        except IntegrityError:
            if on_race is not None:
                on_race()
        with self.session() as s:
            return work(s)

    # -- seeding ------------------------------------------------------------------------------
    def fill(self, s: Session) -> None:
        self._write_site_settings(s, self.lab.config.site.site_settings())
        for t in self.lab.config.tenants:
            self._write_tenant(s, t)
        has_policies = s.scalars(select(Policy).limit(1)).first() is not None
        if not has_policies and self.policy_factory is not None:
            for p in self.policy_factory(self.lab):
                p.body = self.sealer.seal(p.body)  # at rest under the site key (the NAA secret policy)
                s.add(p)
        self._apply_client_settings(s, self.lab.config.site.client_allow_cmg)

    def _write_tenant(self, s: Session, tenant: labconfig.Tenant) -> None:
        """lab.json's tenant as the site's row: whether it is onboarded (a new row takes the lab's apps)."""
        existing = s.get(Tenant, tenant.tenant_id)
        if existing is not None:
            existing.onboarded = tenant.onboarded
            return
        apps = self.lab.config.apps
        server_app = next((a for a in apps if a.identifier_uri and not a.public_client), apps[0])
        s.add(
            Tenant(
                tenant_id=tenant.tenant_id,
                name=tenant.display_name,
                client_app_id=apps[0].app_id,
                server_app_id=server_app.app_id,
                resource_uri=server_app.identifier_uri or "https://ConfigMgrService",
                onboarded=tenant.onboarded,
            )
        )

    def write_lab_tenant(self, tenant: labconfig.Tenant) -> None:
        """One tenant of lab.json over its row in the running site (`cmglab tenant onboard`), nothing else."""
        with self.session() as s:
            self._write_tenant(s, tenant)

    def _apply_client_settings(self, s: Session, allow_cmg: bool) -> None:
        """The client settings policy follows the setting: a changed value is a new policy version."""
        from cmglab.services.management_point.policy_defaults import client_settings_xml

        code = self.lab.config.site.code
        for p in s.scalars(select(Policy).where(Policy.category == "ClientSettings")):
            if f'name="AllowCMG" type="11"><value>{int(allow_cmg)}</value>' in self.sealer.open(p.body):
                continue
            p.version = f"{float(p.version) + 1:.2f}"
            p.body = self.sealer.seal(client_settings_xml(p.policy_id, p.version, code, allow_cmg))

    # -- settings ----------------------------------------------------------------------------
    @staticmethod
    def _write_site_settings(s: Session, settings: SiteSettings) -> None:
        for name, value in settings.model_dump().items():
            row = s.get(SiteSetting, name)
            if row is None:
                s.add(SiteSetting(name=name, value=json.dumps(value)))
            else:
                row.value = json.dumps(value)

    @staticmethod
    def _read_site_settings(s: Session) -> SiteSettings | None:
        # read per request (a change applies live, whoever made it), in plain SQL: ORM rows, JSON and
        # validation each time were ~0.15 ms of CPU
        return _settings_of(s.connection().exec_driver_sql(_SETTINGS_SQL))

    def stored_site_settings(self) -> SiteSettings | None:
        """The settings the site database holds; None when it was never seeded (the MP never started). Read again
        whenever anything was committed to the database since the last read (settings_watch.py; on PostgreSQL
        every time); a copy each time, as `_settings_of` gives."""
        watch = self._settings_watch
        if watch is None:
            return _settings_of(self.db.read(_SETTINGS_SQL))
        parsed = watch.read(lambda: _parsed_rows(self.db.read(_SETTINGS_SQL)))
        return parsed.model_copy() if parsed is not None else None

    def data_version(self) -> int | None:
        """A number that changed if any other connection committed to the SQLite file since it was last asked
        (`PRAGMA data_version` on the settings watch's connection); None on PostgreSQL (no such counter)."""
        watch = self._settings_watch
        return watch.version() if watch is not None else None

    @functools.cached_property
    def _settings_watch(self) -> settings_watch.Watch[SiteSettings | None] | None:
        """The stored settings as last read, kept while nothing was committed to the SQLite file since; opened on
        the first read (a store that only writes never opens it). Once per store, under a lock: cached_property
        has none from Python 3.12 on, and two first requests at once would open two watches whose data_version
        counters start alike, so a version kept from one would be compared with the other's."""
        with _WATCH_OPENING:
            if "_settings_watch" not in self.__dict__:
                self.__dict__["_settings_watch"] = settings_watch.Watch.of(self._url, db.BUSY_TIMEOUT)
            watch: settings_watch.Watch[SiteSettings | None] | None = self.__dict__["_settings_watch"]
            return watch

    def dispose(self) -> None:
        watch = self.__dict__.pop("_settings_watch", None)
        if watch is not None:
            watch.close()
        super().dispose()

    def site_settings(self) -> SiteSettings:
        """The settings the services enforce (read per request: a change applies live)."""
        return self.stored_site_settings() or self.lab.config.site.site_settings()

    def change_site_settings(self, change: SiteSettingsChange) -> SiteSettings:
        """The running site's settings with `change` (`POST /_lab/site`: lab.json untouched, so the MP's next start
        puts lab.json's values back; `cmglab site set`: lab.json's value of the one setting it names). Only
        the rows of the settings given are written (and any row missing, from the merged model), so two
        changes of different settings at once both stay: on SQLite writing only the named rows is what keeps
        both (`exclusive()` takes no lock there); on PostgreSQL the advisory lock also runs one MP replica's
        change at a time."""
        given = change.given()
        with self.db.exclusive() as s:
            current = self._read_site_settings(s) or self.lab.config.site.site_settings()
            updated = current.changed(given)  # the merged model validates: nothing written if it does not
            stored = set(s.scalars(select(SiteSetting.name)))
            values = updated.model_dump()
            for name in sorted(set(given) | (set(values) - stored)):
                s.merge(SiteSetting(name=name, value=json.dumps(values[name])))
            if "client_allow_cmg" in given:  # delivered by policy: the client settings policy follows it
                self._apply_client_settings(s, updated.client_allow_cmg)
            s.flush()
            return self._read_site_settings(s) or updated  # with any other change made meanwhile

    def set_onboarded(self, tenant_id: str, onboarded: bool) -> bool:
        with self.session() as s:
            row = s.get(Tenant, tenant_id)
            if row is None:
                return False
            row.onboarded = onboarded
            return True

    def entra_policy(self, require_device: bool = True, unit: units.SiteUnit | None = None) -> EntraPolicy:
        """The site's Entra-token rule over the onboarded tenants, each bound to its own audience: the tenants read
        per request in plain SQL (an onboarding applies live; in UNIT when the request has one), the rule built
        again only when they changed (the same object while they do not: entra_known.py)."""
        rows = unit.rows(_TENANTS_SQL) if unit is not None else self.db.read(_TENANTS_SQL)
        onboarded = tuple((str(t), str(r), str(a or "")) for t, r, a, on in rows if on)
        return _entra_policy_of(onboarded, require_device)

    def tenants(self, onboarded_only: bool = True) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Tenant))
            return [
                {
                    "tenant_id": t.tenant_id,
                    "name": t.name,
                    "client_app_id": t.client_app_id,
                    "server_app_id": t.server_app_id,
                    "resource_uri": t.resource_uri,
                    "onboarded": t.onboarded,
                }
                for t in rows
                if t.onboarded or not onboarded_only
            ]

    # -- clients ------------------------------------------------------------------------------
    @staticmethod
    def client(s: Session, sms_id: str) -> Client | None:
        return s.get(Client, sms_id.upper())

    def get_client(self, sms_id: str) -> Client | None:
        with self.session() as s:
            return self.client(s, sms_id)

    @contextmanager
    def unit(self) -> Iterator[units.SiteUnit]:
        """A hot request's unit of work in plain SQL (units.py), committed when the block ends."""
        with self.db.driver_unit() as cursor:
            yield units.SiteUnit(self.statements, cursor)

    def retrying_unit(self, work: Callable[[units.SiteUnit], T], on_race: Callable[[], None] | None = None) -> T:
        """`retrying` for a plain-SQL unit: the insert that loses a race on the primary key is a driver error."""
        try:
            with self.unit() as u:
                return work(u)
        except self.db.integrity_errors:
            if on_race is not None:
                on_race()
        with self.unit() as u:
            return work(u)

    def signer(self, sms_id: str) -> units.Signer | None:
        """The registered client's signing certificate and what a reply names of it (plain SQL, no session)."""
        with self.unit() as u:
            return u.signer(sms_id)

    def clients(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [c.as_dict() for c in s.scalars(select(Client).order_by(Client.registered_at))]

    def approve(self, sms_id: str, approved: bool = True) -> bool:
        with self.session() as s:
            c = self.client(s, sms_id)
            if c is None:
                return False
            c.approval = APPROVED if approved else NOT_APPROVED
            c.updated_at = utcnow()
            return True

    def tokens(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [t.as_dict() for t in s.scalars(select(IssuedToken).order_by(IssuedToken.issued_at))]

    def issued(self, unique_id: str) -> IssuedToken | None:
        with self.session() as s:
            return s.get(IssuedToken, unique_id)

    # -- conflicting records ------------------------------------------------------------------
    def conflicts(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [c.as_dict() for c in s.scalars(select(ConflictRecord).order_by(ConflictRecord.id))]

    def resolve_conflict(self, conflict_id: int, action: ConflictStatus) -> dict[str, Any] | None:
        """The admin's resolution (one of `RESOLUTIONS`), taken by the client's next registration attempt."""
        with self.session() as s:
            row = s.get(ConflictRecord, conflict_id)
            if row is None:
                return None
            row.status, row.resolved_at = action, utcnow()
            return row.as_dict()

    # -- bulk registration tokens -------------------------------------------------------------
    def add_bulk_token(self, guid: str, minutes: int, not_before: datetime, not_after: datetime) -> None:
        with self.session() as s:
            s.add(
                BulkToken(
                    guid=guid.lower(),
                    lifetime_minutes=minutes,
                    not_before=not_before.astimezone(UTC).replace(tzinfo=None),
                    not_after=not_after.astimezone(UTC).replace(tzinfo=None),
                )
            )

    def bulk_tokens(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [b.as_dict() for b in s.scalars(select(BulkToken).order_by(BulkToken.created_at))]

    def set_bulk_blocked(self, guid: str, blocked: bool) -> bool:
        with self.session() as s:
            row = s.get(BulkToken, guid.lower())
            if row is None:
                return False
            row.blocked = blocked
            row.blocked_at = utcnow() if blocked else None
            return True

    # -- policies and DDRs --------------------------------------------------------------------
    def policies(self) -> list[Policy]:
        with self.session() as s:
            rows = list(s.scalars(select(Policy).order_by(Policy.category)))
        return [self._opened(p) for p in rows]

    def _opened(self, row: Policy) -> Policy:
        """A policy with its body opened, detached from its session (never written back in the clear)."""
        row.body = self.sealer.open(row.body)
        return row

    def add_ddr(self, *, sms_id: str | None, netbios_name: str, signed: bool, body: str) -> int:
        with self.session() as s:
            row = Ddr(sms_id=sms_id, netbios_name=netbios_name, signed=signed, body=body)
            s.add(row)
            s.flush()
            return int(row.id)

    def ddrs(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [
                {
                    "id": d.id,
                    "sms_id": d.sms_id,
                    "netbios_name": d.netbios_name,
                    "signed": d.signed,
                    "received_at": iso(d.received_at),
                    "size": len(d.body),
                }
                for d in s.scalars(select(Ddr).order_by(Ddr.id))
            ]


def new_sms_id() -> str:
    return "GUID:" + str(uuid.uuid4()).upper()
