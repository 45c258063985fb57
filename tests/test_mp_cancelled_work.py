"""A cancelled MP request (its client gone, a timeout above it, the listener stopping) stops awaiting its message
work (management_point/transport.py `off_loop`), but a thread cannot be stopped: the work runs on to its end, and
what it writes is one unit of work (runtime/db.py `Database.session`: a registration, a token's row, a DDR), so it
is committed whole, or not at all if the work fails. Here the awaiting task is cancelled while its work is
between two writes of one transaction: nobody sees the first write alone, and both are there afterwards."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cmglab.runtime.db import Database
from cmglab.services.management_point.transport import off_loop
from tests.support.waits import WAIT


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "rows"
    name: Mapped[str] = mapped_column(String(20), primary_key=True)


def _names(db: Database) -> list[str]:
    with db.session() as s:
        return sorted(s.scalars(select(_Row.name)))


def test_a_cancelled_requests_work_runs_on_and_commits_whole(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'work.db'}", _Base, "cancelled-work")
    between, go_on, finished = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        with db.session() as s:
            s.add(_Row(name="first"))
            s.flush()  # written in the transaction, not committed
            between.set()
            assert go_on.wait(WAIT)
            s.add(_Row(name="second"))
        finished.set()

    async def request() -> None:
        task = asyncio.ensure_future(off_loop(work))
        assert await asyncio.to_thread(between.wait, WAIT)
        task.cancel()  # what uvicorn does to a request still running when the listener stops
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _names(db) == []  # the cancelled request's work is under way: none of it shows
        go_on.set()
        assert await asyncio.to_thread(finished.wait, WAIT)

    try:
        asyncio.run(request())
        assert _names(db) == ["first", "second"]
    finally:
        db.dispose()
