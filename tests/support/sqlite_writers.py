"""A store written by several processes at once (`cmglab serve --workers N` on SQLite): its one table, and the
writer process the tests start (`python -m tests.support.sqlite_writers DB MODE NAME ...`), talking to the test on
its stdin and stdout so that every step happens at the test's word, never after a sleep.

Modes: `hold NAME` writes one row in a unit of work, says "holding" and commits at the next line ("committed");
`write NAME THREADS COUNT` says "ready", then at the next line writes COUNT rows from each of THREADS threads,
ORM and plain-SQL units in turn, and exits 1 if any write failed."""

from __future__ import annotations

import sys
import threading

from sqlalchemy import Integer, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cmglab.runtime.db import Database


class Base(DeclarativeBase):
    pass


class Write(Base):
    __tablename__ = "writes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    writer: Mapped[str] = mapped_column(String(40))
    n: Mapped[int] = mapped_column(Integer)


def store(path: str) -> Database:
    return Database(f"sqlite:///{path}", Base, "writers")


def _hold(db: Database, name: str) -> int:
    with db.session() as s:  # a unit of work that has written and waits for the test's word to commit
        s.add(Write(writer=name, n=0))
        s.flush()
        print("holding", flush=True)
        sys.stdin.readline()
    print("committed", flush=True)
    return 0


def _write(db: Database, name: str, threads: int, count: int) -> int:
    failures: list[str] = []

    def write(thread: int) -> None:
        tag = f"{name}/{thread}"
        try:
            for n in range(count):
                if n % 2:  # a plain-SQL unit: two writes and a read between them
                    with db.driver_unit() as cur:
                        cur.execute("INSERT INTO writes (writer, n) VALUES (?, ?)", (tag, n))
                        cur.execute("SELECT count(*) FROM writes")
                        cur.execute("UPDATE writes SET n = n WHERE writer = ?", (tag,))
                else:  # an ORM unit of work: a read, then a write
                    with db.session() as s:
                        s.execute(select(func.count()).select_from(Write))
                        s.add(Write(writer=tag, n=n))
        except Exception as exc:
            failures.append(repr(exc))

    print("ready", flush=True)
    sys.stdin.readline()  # every writer starts at the test's word
    pool = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print("failures", failures, flush=True)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    db = store(argv[0])
    mode, name = argv[1], argv[2]
    if mode == "hold":
        return _hold(db, name)
    return _write(db, name, int(argv[3]), int(argv[4]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
