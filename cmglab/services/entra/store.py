"""The directory (tenants, domains, users, apps, devices) and the login host's short-lived state
(refresh tokens, device codes, server nonces) in SQLAlchemy.

Secrets are kept hashed: user passwords and client secrets with PBKDF2, refresh tokens and device
codes with SHA-256 (they are long random strings). Times are UNIX seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    ForeignKey,
    LargeBinary,
    String,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cmglab.core.labconfig import LabConfig
from cmglab.runtime import db
from cmglab.services.entra.nonces import NonceKey

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"

# First-party apps every tenant has, besides the lab config's: Microsoft Graph (the resource of a v2
# request that names no other), Azure AD Graph (roadtx's default resource), Intune enrollment (the
# resource of the real device token sample), Azure CLI (roadtx deviceauth's default client) and the
# Windows sign-in client that asks for PRTs.
FIRST_PARTY_APPS = (
    (GRAPH_APP_ID, "Microsoft Graph", "https://graph.microsoft.com"),
    ("00000002-0000-0000-c000-000000000000", "Windows Azure Active Directory", "https://graph.windows.net"),
    ("d4ebce55-015a-49b5-a083-c84d1797ae8c", "Microsoft Intune Enrollment", "https://enrollment.manage.microsoft.com/"),
    ("04b07795-8ddb-461a-bbee-02f9e1bf7b46", "Microsoft Azure CLI", None),
    ("38aa3b87-a06d-4817-b275-7a316988d93b", "Windows Sign In", None),
)
# A lab cost, still a real KDF (NIST SP 800-132's minimum): 20,000 rounds made PBKDF2 ~55% of an ROPC
# token request (the bench's profile). Stored hashes carry their own count, so older lab databases verify.
PBKDF2_ROUNDS = 1_000


def now() -> int:
    return int(time.time())


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, PBKDF2_ROUNDS)
    return f"pbkdf2_sha256${PBKDF2_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(secret: str, stored: str | None) -> bool:
    if not stored:
        return False
    _, rounds, salt, digest = stored.split("$")
    given = hashlib.pbkdf2_hmac("sha256", secret.encode(), base64.b64decode(salt), int(rounds))
    return hmac.compare_digest(given, base64.b64decode(digest))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    display_name: Mapped[str]
    initial_domain: Mapped[str]
    region: Mapped[str] = mapped_column(default="NA")
    onboarded: Mapped[bool] = mapped_column(default=True)


class Domain(Base):
    __tablename__ = "domains"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)  # lower case
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True)
    federated: Mapped[bool] = mapped_column(default=False)


class User(Base):
    __tablename__ = "users"
    object_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True)
    upn: Mapped[str] = mapped_column(String(320), unique=True)  # lower case
    display_name: Mapped[str] = mapped_column(default="")
    password_hash: Mapped[str]
    onprem_sid: Mapped[str | None]
    enabled: Mapped[bool] = mapped_column(default=True)


class App(Base):
    __tablename__ = "apps"
    app_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    display_name: Mapped[str]
    identifier_uri: Mapped[str | None] = mapped_column(unique=True)
    secret_hash: Mapped[str | None]
    public_client: Mapped[bool] = mapped_column(default=True)
    access_token_version: Mapped[int] = mapped_column(default=1)


class Device(Base):
    __tablename__ = "devices"
    object_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(default="")
    device_type: Mapped[str] = mapped_column(default="Windows")
    os_version: Mapped[str] = mapped_column(default="")
    trust_type: Mapped[str]  # AzureAd (joined) | Workplace (registered) | ServerAd (hybrid)
    join_type: Mapped[int | None]
    owner_id: Mapped[str | None]  # the registering user's object ID
    onprem_sid: Mapped[str | None]  # hybrid: the computer's SID, synced by Entra Connect
    user_certificate: Mapped[bytes | None] = mapped_column(LargeBinary)  # hybrid: AD userCertificate (DER)
    cert_thumbprint: Mapped[str | None]  # the device certificate the DRS issued
    transport_key: Mapped[bytes | None] = mapped_column(LargeBinary)  # SubjectPublicKeyInfo DER
    auth_methods: Mapped[str] = mapped_column(default="")  # RegistrationAuthMethods: the token's amr
    created_at: Mapped[int] = mapped_column(default=now)
    registered_at: Mapped[int | None]
    enabled: Mapped[bool] = mapped_column(default=True)


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.object_id", ondelete="CASCADE"))
    client_id: Mapped[str]
    device_id: Mapped[str | None]
    amr: Mapped[str]  # space separated
    created_at: Mapped[int] = mapped_column(default=now)
    expires_at: Mapped[int]


class PrimaryRefreshToken(Base):
    """A PRT ([MS-OAPXBC] 3.1.5.1.2): bound to a user and a device, with the session key that proves it.
    The real PRT carries its session key sealed inside the token; the lab keeps it here instead (the
    token itself is only a random handle, stored hashed)."""

    __tablename__ = "primary_refresh_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.object_id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(36), index=True)  # the device's deviceId (certificate CN)
    session_key: Mapped[bytes] = mapped_column(LargeBinary)
    amr: Mapped[str]  # space separated
    issued_at: Mapped[int] = mapped_column(default=now)
    expires_at: Mapped[int]


class AuthorizationCode(Base):
    """An authorization code the authorize endpoint gave for a PRT cookie (single use, short-lived)."""

    __tablename__ = "authorization_codes"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.object_id", ondelete="CASCADE"))
    device_id: Mapped[str | None]
    client_id: Mapped[str]
    redirect_uri: Mapped[str]
    amr: Mapped[str]
    expires_at: Mapped[int]


class DeviceCode(Base):
    __tablename__ = "device_codes"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_code: Mapped[str] = mapped_column(String(16), unique=True)
    tenant_key: Mapped[str]  # the tenant segment of the request: an ID, a domain, common, organizations
    client_id: Mapped[str]
    resource: Mapped[str | None]  # v1
    scope: Mapped[str | None]  # v2
    expires_at: Mapped[int]
    user_id: Mapped[str | None]  # set when the user signed in at /devicelogin


class DeviceCodePoll(Base):
    """When a device code was last polled while pending (a table of its own: labs made before it keep working)."""

    __tablename__ = "device_code_polls"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_poll: Mapped[float]  # epoch seconds


class Nonce(Base):
    """A server nonce spent by a device-signed request, kept until NONCE_CLOCK_SKEW after it expires (nonces.py: an
    issued nonce has no row; its first use inserts one, and any other use finds it). The key is the expiry, then the
    nonce: a nonce's text fixes its expiry, so the pair is unique exactly when the nonce is, and the prune of expired
    rows reads the key's first part instead of the whole table (every spent nonce of the last minutes: ~250,000 rows
    at 700 device tokens per second). On SQLite the row is its key's index entry (WITHOUT ROWID): a spend writes one
    B-tree, not a table and its key's index (labs made before keep their table, which works the same, the prune
    reading all of it)."""

    __tablename__ = "nonces"
    __table_args__ = ({"sqlite_with_rowid": False},)
    expires_at: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(String(128), primary_key=True)


class SpentAssertion(Base):
    """SAML assertions redeemed, kept until they expire: a bearer assertion is good for one redemption."""

    __tablename__ = "spent_assertions"
    assertion_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[int]


class Lockout(Base):
    """Smart lockout state per user: wrong passwords counted, and until when the account is locked."""

    __tablename__ = "lockouts"
    upn: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower case
    failures: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[int] = mapped_column(default=0)  # epoch seconds; 0: not locked
    recent: Mapped[str] = mapped_column(default="")  # digests of the last three wrong passwords, space-separated


class DirectoryGeneration(Base):
    """One row: a random token renewed whenever tenants, domains or apps are added (`new_generation`) and on a
    reset (the table is dropped and refilled), so that every process's cache of them (below) knows when to
    start over, whichever worker or replica made the change."""

    __tablename__ = "directory_generation"
    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(36))


def new_generation(s: Session) -> None:
    """Mark tenants, domains and apps as changed by this unit of work (call it before adding any): the other
    sessions' caches start over once it commits, and this session stops using and filling the shared cache
    (what it reads may be its own uncommitted rows)."""
    token = new_guid()
    if not s.execute(update(DirectoryGeneration).where(DirectoryGeneration.id == 1).values(token=token)).rowcount:  # type: ignore[attr-defined]
        s.add(DirectoryGeneration(id=1, token=token))
    s.info[_SNAPSHOT] = _Snapshot(None)


class Store(db.Store):
    """The directory and the login host's short-lived state, seeded from the lab config."""

    def __init__(self, url: str, config: LabConfig, nonce_key: NonceKey) -> None:
        super().__init__(db.Database(url, Base, "entra"))
        self.config = config
        self.nonce_key = nonce_key

    def issue_nonce(self, lifetime: int) -> str:
        """A new server nonce, good for LIFETIME seconds: nothing is written until it is used (nonces.py)."""
        return self.nonce_key.issue(now() + lifetime)

    @contextmanager
    def plain(self) -> Iterator[Plain]:
        """A hot request's unit of work in plain SQL (`Plain`): committed when the block ends, rolled back if it
        raises."""
        with self.db.driver_unit() as cursor:
            yield Plain(self, cursor)

    def consume_nonce(self, value: str, unit: Plain | None = None) -> bool:
        """True once for a nonce this lab issued that has not expired (its row's insert is the use), committed at
        once: a failure later in the request still spends the nonce. Any other text is refused before a write.
        UNIT: the request's own plain unit, whose connection spends it and commits at once (the unit goes on),
        instead of a unit of its own (a pooled connection's checkout and return, and a first statement on a
        connection whose page cache another writer made stale: ~0.02 ms of CPU per device-signed request)."""
        expires_at = self.nonce_key.expiry(value)
        if expires_at is None or expires_at < now():
            return False
        if unit is None:
            with self.plain() as own:
                return self.consume_nonce(value, own)
        if _prune_due():
            unit.run(_NONCE_PRUNE_SQL, (now() - NONCE_CLOCK_SKEW,))
        unit.run(_NONCE_SPEND_SQL, (value, expires_at))
        spent = unit.cursor.rowcount == 1
        unit.commit()
        return bool(spent)

    def fill(self, s: Session) -> None:
        if s.get(DirectoryGeneration, 1) is None or self._missing(s):
            new_generation(s)
        self._fill(s)

    def _missing(self, s: Session) -> bool:
        """Whether the lab config names a tenant, domain or app the directory does not hold yet."""
        c = self.config
        wanted_apps = [a[0] for a in FIRST_PARTY_APPS] + [a.app_id for a in c.apps]
        domains = [n.lower() for t in c.tenants for n in (t.initial_domain, *(d.name for d in t.domains))]
        return (
            any(s.get(Tenant, t.tenant_id) is None for t in c.tenants)
            or any(s.get(Domain, n) is None for n in domains)
            or any(s.get(App, a) is None for a in wanted_apps)
        )

    def _fill(self, s: Session) -> None:
        c = self.config
        for t in c.tenants:
            if s.get(Tenant, t.tenant_id) is None:
                s.add(
                    Tenant(
                        tenant_id=t.tenant_id,
                        display_name=t.display_name,
                        initial_domain=t.initial_domain,
                        region=t.region,
                        onboarded=t.onboarded,
                    )
                )
            domains = {d.name.lower(): d.federated for d in t.domains}
            domains.setdefault(t.initial_domain.lower(), False)
            for name, federated in domains.items():
                if s.get(Domain, name) is None:
                    s.add(Domain(name=name, tenant_id=t.tenant_id, federated=federated))
            for u in t.users:
                if s.get(User, u.object_id) is None:
                    s.add(
                        User(
                            object_id=u.object_id,
                            tenant_id=t.tenant_id,
                            upn=u.upn.lower(),
                            display_name=u.display_name,
                            password_hash=hash_secret(u.password),
                            onprem_sid=u.onprem_sid,
                        )
                    )
        first_party = [(i, n, uri, None, True, 1) for i, n, uri in FIRST_PARTY_APPS]
        configured = [
            (a.app_id, a.display_name, a.identifier_uri, a.client_secret, a.public_client, a.access_token_version)
            for a in c.apps
        ]
        for app_id, name, uri, secret, public, version in [*first_party, *configured]:
            if s.get(App, app_id) is None:
                s.add(
                    App(
                        app_id=app_id,
                        display_name=name,
                        identifier_uri=uri,
                        secret_hash=hash_secret(secret) if secret else None,
                        public_client=public,
                        access_token_version=version,
                    )
                )


# -- lookups -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TenantInfo:
    """A tenant row as the grants read it (rows of tenants, domains and apps are only ever added while the
    service runs; a reset renews the directory generation)."""

    tenant_id: str
    display_name: str
    initial_domain: str
    region: str
    onboarded: bool


@dataclass(frozen=True)
class AppInfo:
    app_id: str
    display_name: str
    identifier_uri: str | None
    secret_hash: str | None
    public_client: bool
    access_token_version: int


@dataclass(frozen=True)
class DomainInfo:
    """A domain row (domains, as tenants, are only ever added while the service runs)."""

    name: str  # lower case
    tenant_id: str
    federated: bool


@dataclass
class _Snapshot:
    """Tenants and apps found under one directory generation (found ones only: a miss always asks the
    database). token None: a private, throwaway snapshot (no generation row, or a session that changes them)."""

    token: str | None
    tenants: dict[str, TenantInfo] = field(default_factory=dict)  # by lower-case ID or domain name
    apps: dict[str, AppInfo] = field(default_factory=dict)  # by lower-case ID
    resources: dict[str, AppInfo] = field(default_factory=dict)  # by lower-case identifier URI without "/"
    domains: dict[str, DomainInfo] = field(default_factory=dict)  # by lower-case name


_SNAPSHOT = "entra.directory"
_GENERATION_SQL = "SELECT token FROM directory_generation WHERE id = 1"
_shared: weakref.WeakKeyDictionary[Engine, _Snapshot] = weakref.WeakKeyDictionary()


def _directory(s: Unit) -> _Snapshot:
    """This unit of work's view of the per-process cache: the directory generation is read once per unit (one
    small query instead of an ORM lookup per tenant, client and resource: ~0.3 ms of CPU per token request),
    and the cache starts over when another unit of work, in any process, has renewed it."""
    if isinstance(s, Plain):
        if s.snapshot is None:
            row = s.one(_GENERATION_SQL)
            s.snapshot = _snapshot_for(s.db.engine, row[0] if row else None)
        return s.snapshot
    snap: _Snapshot | None = s.info.get(_SNAPSHOT)
    if snap is None:
        token = s.connection().exec_driver_sql(_GENERATION_SQL).scalar()  # plain SQL: no ORM statement to compile
        engine = s.get_bind()
        assert isinstance(engine, Engine)
        snap = s.info[_SNAPSHOT] = _snapshot_for(engine, token)
    return snap


def _snapshot_for(engine: Engine, token: str | None) -> _Snapshot:
    """The shared snapshot of generation TOKEN (a new one when it was renewed), a throwaway one without a row."""
    if token is None:
        return _Snapshot(None)
    snap = _shared.get(engine)
    if snap is None or snap.token != token:
        snap = _shared[engine] = _Snapshot(token)
    return snap


class Plain:
    """A hot request's unit of work in plain SQL (`Store.plain`: a DB-API cursor on a pooled driver connection,
    committed when the block ends, rolled back if it raises): its few fixed statements without an ORM session's
    begin, connection checkout, statement compilation and commit (~0.15 ms of CPU for a generation read and a
    select in a session, ~0.02 here). The directory cache is checked against the generation row once per unit, as a
    session's is; a cache miss reads the row in a session of its own (tenants, domains and apps are only ever
    added while the service runs, and a miss is never kept)."""

    def __init__(self, store: Store, cursor: Any) -> None:
        self.store, self.db, self.cursor = store, store.db, cursor
        self.snapshot: _Snapshot | None = None

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """The first row of SQL (`?` placeholders) with PARAMS."""
        self.cursor.execute(self.db.sql(sql), params)
        row = self.cursor.fetchone()
        return None if row is None else tuple(row)

    def run(self, sql: str, params: tuple[Any, ...]) -> None:
        self.cursor.execute(self.db.sql(sql), params)

    def commit(self) -> None:
        """What the unit wrote so far, committed now; what it runs next is committed when the block ends."""
        self.cursor.connection.commit()

    def in_session(self, load: Callable[[Session], Info | None]) -> Info | None:
        with self.store.session() as s:
            return load(s)


# a request's unit of work: an ORM session, or a hot request's plain-SQL unit
Unit = Session | Plain


# The hot requests' fixed statements are plain SQL (`?` placeholders), one text per statement, run by either kind
# of unit: a `Plain` unit's cursor, or a session's own connection in its transaction (no statement to compile).
def sql_one(u: Unit, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The first row of SQL with PARAMS in unit U."""
    if isinstance(u, Plain):
        return u.one(sql, params)
    row = _in_session(u, sql, params).first()
    return None if row is None else tuple(row)


def sql_run(u: Unit, sql: str, params: tuple[Any, ...]) -> None:
    """SQL (a write) with PARAMS in unit U, committed with it."""
    if isinstance(u, Plain):
        u.run(sql, params)
    else:
        _in_session(u, sql, params)


def _in_session(s: Session, sql: str, params: tuple[Any, ...]) -> CursorResult[Any]:
    conn = s.connection()
    return conn.exec_driver_sql(db.driver_sql(conn.dialect, sql), params)


def _tenant_info(t: Tenant) -> TenantInfo:
    return TenantInfo(t.tenant_id, t.display_name, t.initial_domain, t.region, t.onboarded)


def _app_info(a: App) -> AppInfo:
    return AppInfo(a.app_id, a.display_name, a.identifier_uri, a.secret_hash, a.public_client, a.access_token_version)


Info = TypeVar("Info")


def _cached(s: Unit, table: dict[str, Info], key: str, load: Callable[[Session], Info | None]) -> Info | None:
    """The directory cache's entry for `key`, loaded and kept on a miss; what is not found is never kept."""
    found = table.get(key)
    if found is None:
        found = s.in_session(load) if isinstance(s, Plain) else load(s)
        if found is not None:
            table[key] = found
    return found


def tenant_by_key(u: Unit, key: str) -> TenantInfo | None:
    """A tenant by its ID or one of its domain names (case-insensitive)."""
    key = key.lower()

    def load(s: Session) -> TenantInfo | None:
        tenant = s.get(Tenant, key)
        if tenant is None:
            domain = s.get(Domain, key)
            tenant = s.get(Tenant, domain.tenant_id) if domain else None
        return _tenant_info(tenant) if tenant is not None else None

    return _cached(u, _directory(u).tenants, key, load)


def tenant_by_id(u: Unit, tenant_id: str) -> TenantInfo | None:
    """A tenant by its ID only (a verified token's `tid`, a device's tenant)."""
    found = tenant_by_key(u, tenant_id)
    return found if found is not None and found.tenant_id == tenant_id else None


def domain_by_name(u: Unit, name: str) -> DomainInfo | None:
    """A domain by its name (case-insensitive), from the directory cache: the user realm and DRS discovery read
    it for every device (two ORM lookups a user realm request before: ~0.3 ms of CPU)."""
    key = name.lower()

    def load(s: Session) -> DomainInfo | None:
        row = s.get(Domain, key)
        return DomainInfo(row.name, row.tenant_id, row.federated) if row is not None else None

    return _cached(u, _directory(u).domains, key, load)


def user_by_upn(s: Session, upn: str) -> User | None:
    return s.scalar(select(User).where(User.upn == upn.lower()))


@dataclass(frozen=True)
class UserFacts:
    """A user row's columns as a request reads them (`user_facts`): read, never written back."""

    object_id: str
    tenant_id: str
    upn: str
    display_name: str
    onprem_sid: str | None
    enabled: bool


# the columns in the facts' order (`enabled` last, made a bool: SQLite gives 0 / 1)
_USER_FACTS_SQL = f"SELECT {', '.join(f.name for f in fields(UserFacts))} FROM users WHERE object_id = ?"


@dataclass(frozen=True)
class SignInFacts:
    """What a password sign-in reads (`sign_in_facts`): the user, the password hash and the user's smart-lockout
    counters (zero when no row: nothing recorded)."""

    user: UserFacts
    password_hash: str
    lock_failures: int
    locked_until: int
    lock_recent: str


_SIGN_IN_FACTS_SQL = (
    f"SELECT {', '.join('users.' + f.name for f in fields(UserFacts))}, users.password_hash, "
    "coalesce(lockouts.failures, 0), coalesce(lockouts.locked_until, 0), coalesce(lockouts.recent, '') "
    "FROM users LEFT OUTER JOIN lockouts ON lockouts.upn = users.upn WHERE users.upn = ?"
)
_LOCKOUT_RESET_SQL = "UPDATE lockouts SET failures = 0, recent = '' WHERE upn = ?"


def sign_in_facts(s: Unit, upn: str) -> SignInFacts | None:
    """A user by UPN (case-insensitive) with their lockout counters, by one prebuilt select in the sign-in's unit
    of work (the user's ORM select and the lockout row's ORM get cost ~0.15-0.2 ms more CPU per sign-in)."""
    found = sql_one(s, _SIGN_IN_FACTS_SQL, (upn.lower(),))
    if found is None:
        return None
    object_id, tenant_id, name, display_name, onprem_sid, enabled, password_hash, failures, until, recent = found
    user = UserFacts(object_id, tenant_id, name, display_name, onprem_sid, bool(enabled))
    return SignInFacts(user, password_hash, failures, until, recent)


def reset_lockout(s: Unit, upn: str) -> None:
    """A right password: the lockout count starts again, in the sign-in's unit of work."""
    sql_run(s, _LOCKOUT_RESET_SQL, (upn.lower(),))


def user_facts(s: Unit, object_id: str) -> UserFacts | None:
    """A user by object ID, by one prebuilt select in the request's unit of work (the DRS join's user: the ORM
    entity's get and load cost ~0.1 ms more CPU)."""
    found = sql_one(s, _USER_FACTS_SQL, (object_id,))
    if found is None:
        return None
    object_id, tenant_id, upn, display_name, onprem_sid, enabled = found
    return UserFacts(object_id, tenant_id, upn, display_name, onprem_sid, bool(enabled))


def app_by_id(u: Unit, app_id: str) -> AppInfo | None:
    key = app_id.lower()

    def load(s: Session) -> AppInfo | None:
        app = s.get(App, key)
        return _app_info(app) if app is not None else None

    return _cached(u, _directory(u).apps, key, load)


def app_by_resource(u: Unit, resource: str) -> AppInfo | None:
    """The app a resource names: its identifier URI (case-insensitive, trailing slash optional) or ID."""
    key = resource.lower().rstrip("/")

    def load(s: Session) -> AppInfo | None:
        app = s.scalar(select(App).where(func.rtrim(func.lower(App.identifier_uri), "/") == key)) or s.get(App, key)
        return _app_info(app) if app is not None else None

    return _cached(u, _directory(u).resources, key, load)


def device_by_id(s: Session, device_id: str) -> Device | None:
    return s.scalar(select(Device).where(Device.device_id == device_id.lower()))


@dataclass(frozen=True)
class DeviceFacts:
    """What a device-signed token request checks and issues from (`device_facts`): read, never written back."""

    object_id: str
    device_id: str
    tenant_id: str
    enabled: bool
    cert_thumbprint: str | None
    onprem_sid: str | None
    transport_key: bytes | None


_DEVICE_FACTS_SQL = f"SELECT {', '.join(f.name for f in fields(DeviceFacts))} FROM devices WHERE device_id = ?"


def device_facts(s: Unit, device_id: str) -> DeviceFacts | None:
    """The device row's columns a device-signed request needs, by one prebuilt select in the request's unit
    of work (the ORM entity's select and load cost ~0.16 ms more CPU, three times per onboarding)."""
    found = sql_one(s, _DEVICE_FACTS_SQL, (device_id.lower(),))
    if found is None:
        return None
    object_id, device, tenant_id, enabled, thumbprint, sid, transport = found
    # SQLite's 0 / 1 and PostgreSQL's memoryview as the ORM gives them
    transport = None if transport is None else bytes(transport)
    return DeviceFacts(object_id, device, tenant_id, bool(enabled), thumbprint, sid, transport)


def new_guid() -> str:
    return str(uuid.uuid4())


# -- server nonces (srv_challenge, DRS nonce service): the spent ones -----------------------------
NONCE_PRUNE_SECONDS = 10.0  # expired spent nonces deleted at most this often per process (an expired one is refused)
# A spent nonce's row outlives its expiry by this much: the row is all that refuses its replay, so a process whose
# clock is ahead (another replica, or this one before a step back) must not prune it while a process whose clock is
# behind still takes the nonce as unexpired
NONCE_CLOCK_SKEW = 60
_nonces_pruned_at = -NONCE_PRUNE_SECONDS


def _prune_due() -> bool:
    """Whether this process prunes expired spent nonces now: every NONCE_PRUNE_SECONDS, not per use (one delete of
    every row expired since); housekeeping only, an expired nonce is refused by its expiry before any row is read."""
    global _nonces_pruned_at
    if time.monotonic() - _nonces_pruned_at < NONCE_PRUNE_SECONDS:
        return False
    _nonces_pruned_at = time.monotonic()
    return True


# the spend and the prune in plain SQL (`?` placeholders, which `Database.sql` makes the driver's); the spend
# inserts nothing for a nonce used before (SQLite and PostgreSQL alike), and its row count says which it was
_NONCE_SPEND_SQL = "INSERT INTO nonces (value, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING"
_NONCE_PRUNE_SQL = "DELETE FROM nonces WHERE expires_at < ?"


def spend_assertion(s: Session, assertion_id: str, expires_at: int) -> bool:
    """True the first time an assertion ID is redeemed (a savepoint: a concurrent second redemption waits for
    the first and then finds it); undone with the sign-in's transaction if that fails later."""
    s.execute(delete(SpentAssertion).where(SpentAssertion.expires_at < now()))
    try:
        with s.begin_nested():
            s.add(SpentAssertion(assertion_id=assertion_id[:128], expires_at=expires_at))
    except IntegrityError:
        return False
    return True
