"""The SQLite engine's pool holds two sessions for every thread that may hold them at once (anyio runs a
service's sync endpoints on 40 threads, and the MP its message work on 40 more: 80). Entra's sign-in holds a
session and opens a second for the smart-lockout count: with SQLAlchemy's default 5 + 10 connections, 16 sign-ins
at once in the bench once left every thread waiting for a second connection, then 500 after 30 s. Here 80
threads each hold one session, then all hold a second at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from cmglab.runtime.db import POOL_SIZE, SESSION_THREADS, make_engine

# anyio's default thread limiter (40) plus the MP's own `mp-work` executor beside it (40; review 3, finding 5)
THREADS = SESSION_THREADS


def test_two_sessions_per_request_thread_never_run_the_pool_dry(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    everyone_holds_one = threading.Barrier(THREADS)
    everyone_holds_two = threading.Barrier(THREADS)

    def request(_i: int) -> int:
        with Session(engine) as outer:
            outer.execute(text("select 1"))  # the request's own session has its connection
            everyone_holds_one.wait(timeout=20)  # a pool of 15 never lets 40 get here: the barrier breaks
            with Session(engine) as inner:  # the smart-lockout count's own transaction
                value = int(inner.execute(text("select 1")).scalar_one())
                everyone_holds_two.wait(timeout=20)  # a pool of 100 never lets 80 get here
                return value

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            assert list(pool.map(request, range(THREADS))) == [1] * THREADS
    finally:
        engine.dispose()


def _pool_bounds(engine: Engine) -> tuple[int, int]:
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return pool.size(), pool.size() + pool._max_overflow


def test_postgresql_pool_is_sized_by_the_same_rule_as_sqlites(tmp_path: Path) -> None:
    """PostgreSQL's pool was 10 + 20: fewer connections than the 80 threads that may hold two sessions each, so
    30 requests each holding one and waiting for a second once held every connection until the pool's 30 s timeout.
    Both engines now take one rule (runtime/db.py POOL_SIZE, MAX_OVERFLOW). No server needed: an engine connects
    only when a session first asks."""
    sqlite = make_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    postgres = make_engine(f"postgresql://cmglab@/cmglab?host={tmp_path}", schema="management_point")
    try:
        assert postgres.dialect.name == "postgresql"
        assert _pool_bounds(postgres) == _pool_bounds(sqlite) == (POOL_SIZE, 2 * SESSION_THREADS)
    finally:
        sqlite.dispose()
        postgres.dispose()
