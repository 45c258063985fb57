"""The site settings' read per request, skipped while nothing was committed to the site's SQLite file since the last
read (issue 20). The settings are read per request so that a change applies live, whoever makes it (`cmglab site
set` in another process, `POST /_lab/site`, a reset); on SQLite, `PRAGMA data_version` on a connection of the watch's
own says whether any other connection committed anything since its last call, for a few microseconds and no pooled
connection. The settings read after a version was seen are kept with that version, so a commit after the check is
seen by the next one: a change still applies from the next request. Anything committed (a token row, a client's
policy request) makes the next request read again; a reader that never sees a write (the location requests of a
running fleet's devices between their registrations) skips the read.

PostgreSQL has no such counter: the store reads every time (`Watch.of` gives None)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy.engine import make_url

T = TypeVar("T")


class Watch(Generic[T]):
    """A value read from the SQLite file at PATH, kept until any other connection commits to it."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        # a connection of its own, that never writes (its own commits would not count); used under the lock by
        # whichever worker thread asks
        self._conn = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._kept: tuple[int, T] | None = None

    @classmethod
    def of(cls, url: str, busy_timeout: float) -> Watch[T] | None:
        """A watch on the SQLite file of URL; None for any other database (or an in-memory one)."""
        u = make_url(url)
        if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
            return None
        return cls(Path(u.database), busy_timeout)

    def version(self) -> int:
        """A number that changed if another connection committed to the file since the last call."""
        with self._lock:
            row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def read(self, read: Callable[[], T]) -> T:
        """What READ gives now: the value kept when nothing was committed since it was read, else READ's."""
        version = self.version()  # before the read: a commit after this makes the next call read again
        kept = self._kept
        if kept is not None and kept[0] == version:
            return kept[1]
        value = read()
        self._kept = (version, value)
        return value

    def close(self) -> None:
        with self._lock:
            self._conn.close()
