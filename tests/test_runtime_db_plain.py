"""A plain-SQL unit of work (`Database.driver_unit`, the MP's hot requests) writes a DateTime and a Boolean as the
ORM writes them (`Database.bind`): the ORM's readers and any comparison in SQL see one format. `bind` once took the
generic type's processor, which has none for a DateTime on SQLite: the datetime went to sqlite3's own adapter
(deprecated since Python 3.12), which drops a zero microsecond ("02:50:00" beside the ORM's "02:50:00.000000")."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Boolean, DateTime, Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cmglab.runtime.db import Database


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    flag: Mapped[bool] = mapped_column(Boolean)


def test_a_plain_write_stores_what_the_orm_stores(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'plain.db'}", _Base, "plain")
    try:
        for when in (datetime(2026, 11, 26, 2, 50), datetime(2026, 11, 26, 2, 50, 0, 1234)):
            with db.session() as s:
                s.add(_Row(id=1, at=when, flag=True))
            at, flag = db.bind(_Row.__table__.c.at), db.bind(_Row.__table__.c.flag)
            with db.driver_unit() as cursor:
                cursor.execute(db.sql("INSERT INTO rows (id, at, flag) VALUES (?, ?, ?)"), (2, at(when), flag(True)))
            orm, plain = db.read("SELECT at, flag FROM rows ORDER BY id")
            assert plain == orm, when
            with db.session() as s:
                assert [r.at for r in s.query(_Row).order_by(_Row.id)] == [when, when]
                s.query(_Row).delete()
    finally:
        db.dispose()
