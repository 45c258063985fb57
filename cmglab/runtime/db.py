"""SQLAlchemy 2 engine and session helpers shared by the cmglab.services' stores.

SQLite files by default (WAL, a busy timeout so that concurrent writers wait instead of failing);
any SQLAlchemy URL by configuration. PostgreSQL is the scale-out path (several replicas of a service on
one site database): there each service keeps its tables in a schema named after it (`management_point`,
`entra`: both have a `tenants` table, and one URL may serve every service), and schema creation, seeding
and reset run under an advisory lock, so replicas that start or reset at the same moment do not race.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, make_url, select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from cmglab.runtime.sqlite_writes import SerializedConnection, write_lock

Seed = Callable[[Session], None]
# threads of one process that may hold sessions at once: anyio's default limiter (40: FastAPI's sync routes,
# run_in_threadpool) plus a service's own executor beside it (the MP's 40 `mp-work` threads,
# management_point/transport.py `off_loop`; Entra's 40 `entra-work`, runtime/offload.py: a cheaper hop than
# anyio's, so kept, and counted here)
ANYIO_THREADS = 40
OWN_EXECUTOR_THREADS = 40
SESSION_THREADS = ANYIO_THREADS + OWN_EXECUTOR_THREADS
# every engine's pool, SQLite's and PostgreSQL's alike: two sessions for each of those threads (a request that opens
# a second session inside its first must never wait on a pool its own peers hold dry), POOL_SIZE of them kept open
POOL_SIZE = 20
# seconds a SQLite writer waits for the write lock (SQLite's busy timeout, and runtime/sqlite_writes.py's own)
BUSY_TIMEOUT = 30.0
MAX_OVERFLOW = 2 * SESSION_THREADS - POOL_SIZE


def _is_file(database: str | None) -> bool:
    """A SQLite URL's database is a plain file path (not in memory, not a `file:` URI)."""
    return bool(database) and database != ":memory:" and not str(database).startswith("file:")


def _owner_only(database: str | None) -> None:
    """A SQLite database file is created 0600 (it holds the site's clients and secrets): SQLite gives its WAL
    and shared-memory files the database file's permissions."""
    if not database or not _is_file(database):
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if side.exists():
            os.chmod(side, 0o600)


def make_engine(url: str, schema: str | None = None) -> Engine:
    """An engine for `url`; on PostgreSQL, unqualified table names resolve in `schema`."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        _owner_only(u.database)
        # one writer at a time across the service's worker processes, woken at once (runtime/sqlite_writes.py)
        writes = write_lock(Path(u.database), BUSY_TIMEOUT) if u.database and _is_file(u.database) else None
        # a pool big enough for two sessions per request thread (SESSION_THREADS): a request that opens a second
        # session inside its first (Entra's smart lockout records a failure in a transaction of its own) once
        # exhausted the default 5 + 10 at 16 concurrent sign-ins, every thread waiting for a second connection
        # (QueuePool timeout after 30 s, then 500); SQLite connections are only file handles
        engine = create_engine(
            u,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT, "factory": SerializedConnection},
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            dbapi_conn.writer = writes

        return engine
    args: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":  # SQLAlchemy's driver for the bare scheme is psycopg2; the lab ships psycopg 3
            u = u.set(drivername="postgresql+psycopg")
        if schema:
            args["options"] = f"-c search_path={schema}"
    # the same pool as SQLite's (10 + 20 once: fewer connections than the threads that hold them, so 30 requests
    # each holding one session and waiting for a second held every connection until the pool's 30 s timeout); the
    # server must allow 2 * SESSION_THREADS connections per process (README, "Scale-out")
    return create_engine(u, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, connect_args=args)


def _same(value: Any) -> Any:
    return value


def driver_sql(dialect: Dialect, statement: str) -> str:
    """STATEMENT (`?` placeholders) in DIALECT's driver's own parameter style (a driver cursor's, or
    `Connection.exec_driver_sql`'s): SQLite's `?`, psycopg's `%s`."""
    style = dialect.paramstyle
    if style == "qmark":
        return statement
    if style in ("format", "pyformat"):
        return statement.replace("%", "%%").replace("?", "%s")
    raise ValueError(f"no plain-SQL placeholders for the {style!r} parameter style")


class Database:
    """An engine, its session factory and the metadata of one service's store (`name`: the service)."""

    def __init__(self, url: str, base: type[DeclarativeBase], name: str) -> None:
        self.postgres = make_url(url).get_backend_name() == "postgresql"
        self.schema = name.replace("-", "_")
        self.lock_id = zlib.crc32(self.schema.encode())
        self.engine = make_engine(url, self.schema if self.postgres else None)
        self.base = base
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        with self.exclusive() as s:
            self._create(s, None)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        with self.sessions() as s, s.begin():
            yield s

    def read(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of one plain-SQL query, outside any unit of work: on a pooled driver connection, with no
        session and no statement compilation (~20 us instead of ~130 us of CPU for a session), for the small
        reads a request makes on its own (the site settings, read per request so that a change applies live)."""
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(sql)
                return [tuple(row) for row in cursor.fetchall()]
            finally:
                cursor.close()
        finally:
            conn.close()  # back to the pool, which rolls back whatever the driver began

    @property
    def integrity_errors(self) -> tuple[type[Exception], ...]:
        """A constraint refused a write: SQLAlchemy's error, or the driver's own in a `driver_unit`."""
        return (IntegrityError, self.engine.dialect.loaded_dbapi.IntegrityError)

    def sql(self, statement: str) -> str:
        """STATEMENT (`?` placeholders) in the driver's own parameter style, for `driver_unit`'s cursor."""
        return driver_sql(self.engine.dialect, statement)

    @contextmanager
    def driver_unit(self) -> Iterator[Any]:
        """A unit of work in plain SQL (a DB-API cursor; statements from `sql()`) on a pooled driver connection:
        committed when the block ends, rolled back if it raises. For a hot request's few fixed statements: no
        session, no ORM rows, no statement compilation or caching keys."""
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                yield cursor
                conn.commit()
            finally:
                cursor.close()
        finally:
            conn.close()  # back to the pool, which rolls back whatever was not committed

    def bind(self, column: Any) -> Callable[[Any], Any]:
        """How SQLAlchemy writes COLUMN's values on this database (SQLite keeps a DateTime as text in its own
        format), for a value a `driver_unit` writes: the same bytes as an ORM write."""
        dialect = self.engine.dialect  # the dialect's own type (SQLite's DATETIME): the generic one binds as is
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        return process if process is not None else _same

    @contextmanager
    def exclusive(self) -> Iterator[Session]:
        """A unit of work that no other process of this service runs at the same time, for check-then-create
        work (schema, seed rows). PostgreSQL: an advisory lock, held until the transaction ends; SQLite needs
        none (one process per database file)."""
        with self.session() as s:
            if self.postgres:
                s.execute(select(func.pg_advisory_xact_lock(self.lock_id)))
            yield s

    def _create(self, s: Session, seed: Seed | None) -> None:
        if self.postgres:
            s.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
        self.base.metadata.create_all(s.connection())
        if seed is not None:
            seed(s)

    def reset(self, seed: Seed | None = None) -> None:
        """Empty the store: drop, recreate and seed in one transaction (on PostgreSQL the other replicas see
        the old tables or the new ones, never none)."""
        with self.exclusive() as s:
            self.base.metadata.drop_all(s.connection())
            self._create(s, seed)

    def dispose(self) -> None:
        self.engine.dispose()


class Store:
    """The one store pattern of the services: a service's tables on a `Database`, `session()` for a unit
    of work, `seed()` at start (`fill` under the service's exclusive lock, so that replicas starting
    together never duplicate a row), `reset()` (drop, recreate, fill). A service's store subclasses it,
    fills the tables in `fill` and offers its queries as typed methods."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def session(self) -> AbstractContextManager[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        return self.db.session()

    def fill(self, s: Session) -> None:
        """Bring the seed rows in line with the lab config (the service's store says which rows it keeps)."""

    def seed(self) -> None:
        try:
            with self.db.exclusive() as s:  # replicas starting together: one seeds, the others find the rows
                self.fill(s)
        except IntegrityError:  # SQLite: another process of this service seeded at the same moment
            with self.db.exclusive() as s:
                self.fill(s)

    def reset(self) -> None:
        self.db.reset(self.fill)

    def dispose(self) -> None:
        self.db.dispose()
