"""The MP's hot requests' units of work in plain SQL (issue 20): policy assignments, CCM_STS and a registration
without a conflicting record read and write a few rows each, and a session with ORM rows, its identity map and
flush cost more than the rest of such a request. Each unit is one transaction on a pooled driver connection
(`Database.driver_unit`) with fixed statements in the driver's placeholders; values are written as the ORM
writes them (`Database.bind`), so the ORM's readers (`/_lab/...`, `cmglab clients`) see the same rows.

The tables are store.py's; their column names are spelled here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cmglab.core.labconfig import SiteSettings
from cmglab.runtime import db

_SIGNER = "SELECT signing_cert, approval, netbios_name, fqdn, last_policy_request FROM clients WHERE sms_id = ?"
_TOUCH = "UPDATE clients SET last_policy_request = ? WHERE sms_id = ?"
_POLICIES = (
    "SELECT policy_id, version, policy_type, category, flags, assignment_id, body FROM policies ORDER BY category"
)
_POLICY = (
    "SELECT policy_id, version, policy_type, category, flags, assignment_id, body FROM policies WHERE policy_id = ?"
)
_RECIPIENT = "SELECT signing_cert, encryption_cert, approval FROM clients WHERE sms_id = ?"
_CLIENT = (
    "SELECT signing_thumbprint, approval, aad_device_id, aad_tenant_id, pki_thumbprint, bulk_token_guid "
    "FROM clients WHERE sms_id = ?"
)
_CLIENT_BY_PKI = "SELECT sms_id FROM clients WHERE pki_thumbprint = ? LIMIT 1"
_CLIENT_BY_AAD = "SELECT sms_id FROM clients WHERE aad_device_id = ? LIMIT 1"
_BULK_BLOCKED = "SELECT blocked FROM bulk_tokens WHERE guid = ?"
_SETTINGS = "SELECT name, value FROM site_settings ORDER BY name"
_RECORD = (
    "INSERT INTO issued_tokens (unique_id, kind, token_type, proof, sms_id, cert_thumbprint, bulk_token_guid, "
    "aad_tenant_id, aad_device_id, aad_user_id, issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# what a registration writes of a client (store.Client; last_policy_request is policy assignments')
CLIENT_FIELDS = (
    "netbios_name",
    "fqdn",
    "signing_cert",
    "encryption_cert",
    "signing_thumbprint",
    "pki_thumbprint",
    "auth_kind",
    "domain_account",
    "aad_device_id",
    "aad_tenant_id",
    "bulk_token_guid",
    "approval",
    "internet",
    "agent_identity",
    "agent_version",
    "updated_at",
)
_INSERT_CLIENT = (
    f"INSERT INTO clients (sms_id, registered_at, {', '.join(CLIENT_FIELDS)}) "
    f"VALUES (?, ?, {', '.join('?' for _ in CLIENT_FIELDS)})"
)
_UPDATE_CLIENT = f"UPDATE clients SET {', '.join(f'{f} = ?' for f in CLIENT_FIELDS)} WHERE sms_id = ?"
_STATEMENTS: tuple[str, ...] = (_SIGNER, _TOUCH, _CLIENT, _CLIENT_BY_PKI, _CLIENT_BY_AAD, _BULK_BLOCKED, _RECORD)
_STATEMENTS += (_INSERT_CLIENT, _UPDATE_CLIENT, _POLICY, _RECIPIENT)

# a policy as stored (its body sealed): policy_id, version, policy_type, category, flags, assignment_id, body
PolicyRow = tuple[str, str, str, str, int, str, str]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive(value: Any) -> datetime | None:
    """A DateTime column as the driver gives it (SQLite: its text; PostgreSQL: a naive datetime)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


class RecordGone(Exception):
    """A client record read by a unit was deleted (by another connection) before the unit updated it."""


@dataclass(frozen=True)
class Signer:
    """What the MP needs of the registered client that signed a message."""

    sms_id: str
    signing_cert: str  # hex DER
    approval: int
    netbios_name: str
    fqdn: str
    last_policy_request: datetime | None = None  # naive UTC, as the table keeps it


@dataclass(frozen=True)
class Recipient:
    """What a secret policy body needs of the registered client asking for it: the key that signs its request,
    the certificate the body is encrypted to, its approval."""

    sms_id: str
    signing_cert: str  # hex DER
    encryption_cert: str  # hex DER
    approval: int


@dataclass(frozen=True)
class ClientKeys:
    """What CCM_STS and a registration check of a registered client (its owner's identities)."""

    sms_id: str
    signing_thumbprint: str
    approval: int
    aad_device_id: str | None
    aad_tenant_id: str | None
    pki_thumbprint: str | None
    bulk_token_guid: str | None


@dataclass(frozen=True)
class TokenRecord:
    """An issued token's row (store.IssuedToken): its unique ID, kind and binding, never the token."""

    unique_id: str
    kind: str
    token_type: str
    proof: str
    sms_id: str | None
    expires_at: datetime  # naive UTC, as the table keeps it
    cert_thumbprint: str | None = None
    bulk_token_guid: str | None = None
    aad_tenant_id: str | None = None
    aad_device_id: str | None = None
    aad_user_id: str | None = None


@dataclass
class Statements:
    """The statements in one database's placeholders, and how it stores a DateTime and a Boolean (`Database.bind`
    of the ORM's columns)."""

    database: db.Database
    settings_of: Callable[[Iterable[Sequence[Any]]], SiteSettings]  # the enforced settings of the rows
    when: Callable[[datetime], Any]
    flag: Callable[[bool], Any]
    sql: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.sql = {q: self.database.sql(q) for q in _STATEMENTS}


class SiteUnit:
    """One request's reads and writes on a driver cursor, committed together (`Store.unit`)."""

    def __init__(self, statements: Statements, cursor: Any) -> None:
        self.q, self.cursor = statements, cursor

    def _one(self, statement: str, *params: Any) -> Any:
        self.cursor.execute(self.q.sql[statement], params)
        return self.cursor.fetchone()

    def rows(self, statement: str) -> list[tuple[Any, ...]]:
        """The rows of a read without parameters (the store's own statements, read in this unit)."""
        self.cursor.execute(statement)
        return [tuple(row) for row in self.cursor.fetchall()]

    # -- policy assignments -----------------------------------------------------------------------
    def signer(self, sms_id: str) -> Signer | None:
        row = self._one(_SIGNER, sms_id.upper())
        if not row:
            return None
        return Signer(sms_id.upper(), str(row[0]), int(row[1]), row[2] or "", row[3] or "", _naive(row[4]))

    def touch(self, sms_id: str, when: datetime) -> None:
        """The client's last policy request (naive UTC)."""
        self.cursor.execute(self.q.sql[_TOUCH], (self.q.when(when), sms_id.upper()))

    def policies(self) -> tuple[PolicyRow, ...]:
        """Every policy as stored, by category: the rows themselves say when the site's policy changed."""
        self.cursor.execute(_POLICIES)
        return tuple(tuple(row) for row in self.cursor.fetchall())

    def policy(self, policy_id: str) -> PolicyRow | None:
        """One policy as stored (its body sealed)."""
        row = self._one(_POLICY, policy_id.upper())
        return tuple(row) if row else None

    def recipient(self, sms_id: str) -> Recipient | None:
        row = self._one(_RECIPIENT, sms_id.upper())
        return Recipient(sms_id.upper(), str(row[0]), str(row[1]), int(row[2])) if row else None

    # -- clients, tokens ----------------------------------------------------------------------------
    def client(self, sms_id: str) -> ClientKeys | None:
        row = self._one(_CLIENT, sms_id.upper())
        return ClientKeys(sms_id.upper(), str(row[0]), int(row[1]), *row[2:6]) if row else None

    def client_by_pki(self, thumbprint: str) -> str | None:
        """The SMSID of the client registered with this PKI certificate."""
        row = self._one(_CLIENT_BY_PKI, thumbprint.upper())
        return str(row[0]) if row else None

    def client_by_aad_device(self, device_id: str) -> str | None:
        """The SMSID of the client registered by this Entra device."""
        row = self._one(_CLIENT_BY_AAD, device_id.lower())
        return str(row[0]) if row else None

    def bulk_blocked(self, guid: str) -> bool | None:
        """Whether the site's bulk registration token GUID is blocked; None: the site never issued it."""
        row = self._one(_BULK_BLOCKED, guid.lower())
        return bool(row[0]) if row else None

    def site_settings(self) -> SiteSettings:
        """The settings the site enforces (read per request: a change applies live)."""
        self.cursor.execute(_SETTINGS)
        return self.q.settings_of(self.cursor.fetchall())

    def record(self, token: TokenRecord) -> None:
        """An issued token's row."""
        when = self.q.when
        self.cursor.execute(
            self.q.sql[_RECORD],
            (
                token.unique_id,
                token.kind,
                str(token.token_type),
                str(token.proof),
                token.sms_id,
                token.cert_thumbprint,
                token.bulk_token_guid,
                token.aad_tenant_id,
                token.aad_device_id,
                token.aad_user_id,
                when(utcnow()),
                when(token.expires_at),
            ),
        )

    def write_client(self, sms_id: str, values: dict[str, Any], *, new: bool) -> None:
        """A registration's client row: VALUES holds every field of CLIENT_FIELDS (datetimes naive UTC).
        RecordGone: the existing record this unit read was deleted before the update (nothing was written)."""
        row = [values[f] for f in CLIENT_FIELDS]
        row[CLIENT_FIELDS.index("internet")] = self.q.flag(values["internet"])
        row[CLIENT_FIELDS.index("updated_at")] = self.q.when(values["updated_at"])
        if new:
            self.cursor.execute(self.q.sql[_INSERT_CLIENT], (sms_id, self.q.when(values["updated_at"]), *row))
        else:
            self.cursor.execute(self.q.sql[_UPDATE_CLIENT], (*row, sms_id))
            if self.cursor.rowcount != 1:  # the ORM's flush says StaleDataError here
                raise RecordGone(sms_id)
