"""One writer at a time on a SQLite file, across every process of a service, woken at once.

SQLite lets one connection write at a time. A connection that finds the write lock taken retries in its busy
handler, which sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries: a waiter sleeps far longer than the holder's
write takes (Entra's 2 workers, ROPC: 46 % of their samples waiting there, 2026-11-26). Here a connection takes a
lock of our own before its first write statement and lets it go when its transaction ends (commit, rollback,
close): a thread lock within the process, then `flock` on a file beside the database across processes. Both wake
a waiter as soon as the holder lets go, and as SQLite's own lock is then free, its busy handler never sleeps.
SQLite's lock and busy timeout stay underneath (another program writing the file still waits there).

Only writes are serialized: reads never take the lock (WAL readers do not block writers or each other). The
lock is taken in the thread that writes (the services' worker threads), never on an event loop.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# the statements that write without a transaction of their own, or open one: everything but these
_READS = ("select", "pragma", "explain")


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
        # the same limit as SQLite's busy timeout, and its error: a thread that waits on a write of its own
        # (a second unit of work inside a first that has written) fails as it would have on SQLite's lock
        if not self._threads.acquire(timeout=self.timeout):
            raise sqlite3.OperationalError("database is locked")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks this worker thread only; the holder is another process
        except BaseException:
            self._threads.release()
            raise

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
