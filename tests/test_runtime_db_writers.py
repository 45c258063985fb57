"""Writers of one SQLite store in several processes (`cmglab serve --workers N`) take turns through
runtime/sqlite_writes.py's lock (a thread lock, then `flock` on `<database>-writer`): held from a unit of work's
first write until it commits or rolls back, never by a read. Real processes write concurrently through the lab's
own `Database` (ORM sessions and plain-SQL units alike): no write is lost, none fails with "database is locked"."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from cmglab.runtime import db as db_module
from cmglab.runtime.db import Database
from tests.support import sqlite_writers as writers
from tests.support.sqlite_writers import Write

REPO = Path(__file__).resolve().parents[1]  # the writer processes import tests.support from here


def _child(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.sqlite_writers", str(path), *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _tables(path: Path) -> None:
    """The store's file with its table, and no connection left open."""
    writers.store(str(path)).dispose()


@contextmanager
def _store(path: Path) -> Iterator[Database]:
    db = writers.store(str(path))
    try:
        yield db
    finally:
        db.dispose()


def _lock_free(path: Path) -> bool:
    """Whether another open file could take the writers' lock now."""
    fd = os.open(path.with_name(path.name + "-writer"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing the only descriptor lets a lock taken here go
    return True


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "writers.db"
    threads, count = 4, 150
    _tables(path)  # before the writers start
    children = [_child(path, "write", name, str(threads), str(count)) for name in ("a", "b")]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=300)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0, 0], outputs
    with _store(path) as db, db.session() as s:
        rows = s.execute(select(Write.writer, func.count()).group_by(Write.writer)).all()
    assert dict(rows) == {f"{name}/{t}": count for name in ("a", "b") for t in range(threads)}
    assert _lock_free(path)


def test_a_written_unit_holds_the_lock_across_processes_until_it_commits(tmp_path: Path) -> None:
    path = tmp_path / "writers.db"
    _tables(path)
    child = _child(path, "hold", "held")
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "holding"
        assert not _lock_free(path)  # the child's write holds it
        child.stdin.write("commit\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "committed"
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert _lock_free(path)
    with _store(path) as db, db.session() as s:
        assert s.execute(select(func.count()).select_from(Write)).scalar() == 1


def test_reads_never_take_the_lock_and_every_end_of_a_write_lets_it_go(tmp_path: Path) -> None:
    path = tmp_path / "writers.db"
    with _store(path) as db:
        with db.session() as s:  # a read-only unit of work
            s.execute(select(func.count()).select_from(Write))
            assert _lock_free(path)
        with db.session() as s:  # a write: held until the commit
            s.add(Write(writer="x", n=1))
            s.flush()
            assert not _lock_free(path)
        assert _lock_free(path)
        with pytest.raises(RuntimeError), db.session() as s:  # a rolled-back write
            s.add(Write(writer="y", n=2))
            s.flush()
            assert not _lock_free(path)
            raise RuntimeError("roll back")
        assert _lock_free(path)
        with db.driver_unit() as cursor:  # a plain-SQL unit with a refused statement: held until it commits
            cursor.execute("INSERT INTO writes (writer, n) VALUES ('z', 3)")
            with pytest.raises(db.integrity_errors):
                cursor.execute("INSERT INTO writes (id, writer, n) VALUES (1, 'dup', 4)")
            assert not _lock_free(path)
        assert _lock_free(path)
        with db.engine.connect() as conn:  # autocommit DDL takes it for the statement only
            conn.execute(text("CREATE TABLE IF NOT EXISTS extra (id INTEGER PRIMARY KEY)"))
            assert _lock_free(path)
        with db.session() as s:
            assert [w for (w,) in s.execute(select(Write.writer).order_by(Write.id))] == ["x", "z"]


def test_a_worker_that_keeps_a_write_open_makes_the_others_fail_in_time_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wedged worker (a thread stuck inside a unit that has written, a stopped process) holds the lock: a writer
    of another process gets SQLite's own answer after the busy timeout, as it did before the lock existed, and is
    never left waiting on `flock` for as long as the wedged one lives."""
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT", 0.5)
    path = tmp_path / "writers.db"
    _tables(path)
    child = _child(path, "hold", "wedged")
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "holding"
        with _store(path) as db:
            with pytest.raises(OperationalError, match="database is locked"), db.session() as s:
                s.add(Write(writer="late", n=1))
                s.flush()
            child.stdin.write("commit\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "committed"
            with db.session() as s:  # the lock let go, the next write goes through
                s.add(Write(writer="after", n=2))
            with db.session() as s:
                assert sorted(w for (w,) in s.execute(select(Write.writer))) == ["after", "wedged"]
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert _lock_free(path)


def test_the_connections_own_shortcuts_take_the_lock_too(tmp_path: Path) -> None:
    """sqlite3's Connection.execute / executemany / executescript make a cursor of their own: a write through them
    is serialized like any other."""
    path = tmp_path / "writers.db"
    with _store(path) as db:
        pooled = db.engine.raw_connection()
        try:
            conn = pooled.driver_connection
            assert conn is not None
            conn.execute("INSERT INTO writes (writer, n) VALUES ('shortcut', 1)")
            assert not _lock_free(path)
            conn.commit()
            assert _lock_free(path)
            conn.executemany("INSERT INTO writes (writer, n) VALUES (?, ?)", [("many", 2), ("many", 3)])
            assert not _lock_free(path)
            conn.rollback()
            assert _lock_free(path)
            conn.executescript("INSERT INTO writes (writer, n) VALUES ('script', 4);")
            assert _lock_free(path)
        finally:
            pooled.close()
        with db.session() as s:
            assert sorted(w for (w,) in s.execute(select(Write.writer))) == ["script", "shortcut"]
