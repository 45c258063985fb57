"""SQLAlchemy 2 engine and session helpers shared by the services' stores.

SQLite files by default (WAL, a busy timeout so that concurrent writers wait instead of failing);
any SQLAlchemy URL (PostgreSQL for replicas) by configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """An engine, its session factory and the metadata of one service's store."""

    def __init__(self, url: str, base: type[DeclarativeBase]) -> None:
        self.engine = make_engine(url)
        self.base = base
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        base.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        with self.sessions() as s, s.begin():
            yield s

    def reset(self) -> None:
        self.base.metadata.drop_all(self.engine)
        self.base.metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
