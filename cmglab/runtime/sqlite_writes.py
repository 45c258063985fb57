"""One writer at a time on a SQLite file, across every process of a service, woken at once.

SQLite lets one connection write at a time. A connection that finds the write lock taken retries in its busy
handler, which sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries: a waiter sleeps far longer than the holder's
write takes (Entra's 2 workers, ROPC: 46 % of their samples waiting there, 2026-11-26). Here a connection takes a
lock of our own before its first write statement and lets it go when its transaction ends (commit, rollback,
close): a thread lock within the process, then `flock` on a file beside the database across processes. The
thread lock wakes a waiter as soon as the holder lets go; `flock` is tried without blocking every 0.1-1 ms, so a
waiter in another process is at most 1 ms late, and the wait has SQLite's limit (30 s, then "database is locked"):
a blocking `flock` has no timeout, and a worker that kept a transaction open would stall every other worker for as
long instead of failing their requests. As SQLite's own lock is free when ours is had, its busy handler never
sleeps; it stays underneath (another program writing the file still waits there).

Only writes are serialized: reads never take the lock (WAL readers do not block writers or each other). The
lock is taken in the thread that writes (the services' worker threads), never on an event loop.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# the statements that write without a transaction of their own, or open one: everything but these
_READS = ("select", "pragma", "explain")
# seconds between tries of another process's `flock`: the first, and the most (doubling in between)
_FIRST_PAUSE, _LONGEST_PAUSE = 0.0001, 0.001


class WriteLock:
    """The lock of one database file: a thread lock, then an exclusive `flock` on `<database>-writer`."""

    def __init__(self, database: Path, timeout: float) -> None:
        self.path = database.with_name(database.name + "-writer")
        self.timeout = timeout
        self._fd = -1
        self._open()
        _LOCKS.add(self)

    def _open(self) -> None:
        """A lock of this process's own: a file descriptor shared with a forked parent would be one `flock` for
        both, and a thread lock copied while held would never be let go."""
        if self._fd >= 0:
            os.close(self._fd)
        self._threads = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self) -> None:
        # the same limit as SQLite's busy timeout, and its error, for the whole wait: a thread that waits on a
        # write of its own (a second unit of work inside a first that has written) or on a wedged worker fails
        # as it would have on SQLite's lock
        deadline = time.monotonic() + self.timeout
        if not self._threads.acquire(timeout=self.timeout):
            raise sqlite3.OperationalError("database is locked")
        try:
            self._flock_by(deadline)
        except BaseException:
            self._threads.release()
            raise

    def _flock_by(self, deadline: float) -> None:
        """The other processes' turn: `flock` tried without blocking (a blocking one cannot be given a limit),
        in this worker thread only."""
        pause = _FIRST_PAUSE
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise sqlite3.OperationalError("database is locked") from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LONGEST_PAUSE)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_LOCKS: weakref.WeakSet[WriteLock] = weakref.WeakSet()
_BY_FILE: weakref.WeakValueDictionary[Path, WriteLock] = weakref.WeakValueDictionary()
_BY_FILE_GUARD = threading.Lock()


def write_lock(database: Path, timeout: float) -> WriteLock:
    """The process's one lock for DATABASE: two engines on one file (a tool beside a service's store) share it,
    so their threads queue on its thread lock (with its timeout) and never on `flock` against each other."""
    key = database.resolve()
    with _BY_FILE_GUARD:
        lock = _BY_FILE.get(key)
        if lock is None:
            lock = _BY_FILE[key] = WriteLock(key, timeout)
        return lock


def _reopen_after_fork() -> None:
    global _BY_FILE_GUARD
    _BY_FILE_GUARD = threading.Lock()
    for lock in list(_LOCKS):
        lock._open()


os.register_at_fork(after_in_child=_reopen_after_fork)


def _writes(statement: str) -> bool:
    return not statement.lstrip()[:7].lower().startswith(_READS)


class SerializedCursor(sqlite3.Cursor):
    """A cursor whose writes first take the connection's `WriteLock`."""

    connection: SerializedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> SerializedCursor:
        conn = self.connection
        if conn.writer is None or conn.holding or not _writes(sql):
            super().execute(sql, parameters)
            return self
        conn.take()
        try:
            super().execute(sql, parameters)
        finally:
            conn.settle()
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> SerializedCursor:
        conn = self.connection
        if conn.writer is None or conn.holding or not _writes(sql):
            super().executemany(sql, seq_of_parameters)
            return self
        conn.take()
        try:
            super().executemany(sql, seq_of_parameters)
        finally:
            conn.settle()
        return self


class SerializedConnection(sqlite3.Connection):
    """`sqlite3.connect(..., factory=SerializedConnection)`, then `writer` set: holds the lock from its first
    write statement until its transaction ends."""

    writer: WriteLock | None = None
    holding = False

    def cursor(self, factory: Any = SerializedCursor) -> Any:
        return super().cursor(factory)

    # the connection's shortcuts make a plain sqlite3.Cursor of their own: through ours, so they take the lock too
    def execute(self, sql: str, parameters: Any = (), /) -> SerializedCursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> SerializedCursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        """A script may write anywhere in it: the lock for the whole script (it runs outside any transaction)."""
        if self.writer is None or self.holding:
            return super().executescript(sql_script)
        self.take()
        try:
            return super().executescript(sql_script)
        finally:
            self.settle()

    def take(self) -> None:
        assert self.writer is not None
        self.writer.acquire()
        self.holding = True

    def settle(self) -> None:
        """After a write statement: a statement that opened no transaction (autocommit DDL) or one that
        failed before opening it lets the lock go now; an open transaction keeps it until it ends."""
        if self.holding and not self.in_transaction:
            self._let_go()

    def _let_go(self) -> None:
        self.holding = False
        assert self.writer is not None
        self.writer.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if self.holding and not self.in_transaction:
                self._let_go()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            if self.holding and not self.in_transaction:
                self._let_go()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.holding:
                self._let_go()
