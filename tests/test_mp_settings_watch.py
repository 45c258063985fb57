"""The MP's site settings read per request, skipped while nothing was committed to its SQLite file
(services/management_point/settings_watch.py, issue 20): a change still applies from the next read, whoever
commits it (this store, another store on the file as `cmglab site set` is, a bare connection); the read is skipped
only while nothing at all was committed; each read hands out a copy."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import pytest

from cmglab.core.labconfig import SiteSettingsChange
from cmglab.runtime.lab import Lab
from cmglab.services.management_point.settings_watch import Watch
from cmglab.services.management_point.store import Store
from cmglab.services.management_point.units import TokenRecord
from tests.support.lab import new_lab


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return new_lab(tmp_path / "lab")


def _store(lab: Lab, path: Path) -> Store:
    return Store(lab, url=f"sqlite:///{path}")


def _reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The plain-SQL reads STORE makes from now on."""
    seen: list[str] = []
    read = store.db.read

    def counted(sql: str) -> list[tuple[object, ...]]:
        seen.append(sql)
        return read(sql)

    monkeypatch.setattr(store.db, "read", counted)
    return seen


def test_a_change_applies_from_the_next_read_whoever_commits_it(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "site.db"
    store, other = _store(lab, path), _store(lab, path)
    try:
        lifetime = store.site_settings().ccm_token_lifetime_minutes
        store.change_site_settings(SiteSettingsChange.model_validate({"ccm_token_lifetime_minutes": lifetime + 1}))
        assert store.site_settings().ccm_token_lifetime_minutes == lifetime + 1  # this store's own change
        other.change_site_settings(SiteSettingsChange.model_validate({"ccm_token_lifetime_minutes": lifetime + 2}))
        assert store.site_settings().ccm_token_lifetime_minutes == lifetime + 2  # another store's (cmglab site set)
        with sqlite3.connect(path) as bare:  # anyone's
            bare.execute(
                "UPDATE site_settings SET value = ? WHERE name = 'ccm_token_lifetime_minutes'", (str(lifetime + 3),)
            )
        assert store.site_settings().ccm_token_lifetime_minutes == lifetime + 3
        assert other.site_settings().ccm_token_lifetime_minutes == lifetime + 3
    finally:
        store.dispose()
        other.dispose()


def test_the_read_is_skipped_only_while_nothing_was_committed(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "site.db"
    store = _store(lab, path)
    try:
        reads = _reads(store, monkeypatch)
        first = store.site_settings()
        assert store.site_settings() == first and len(reads) == 1  # nothing committed: not read again
        with store.unit() as u:  # any commit (here a token's row, another table) makes the next call read
            u.record(TokenRecord("x", "ccm", "Device", "Certificate", None, datetime(2030, 1, 1)))
        assert store.site_settings() == first and len(reads) == 2
        assert store.site_settings() == first and len(reads) == 2
    finally:
        store.dispose()


def test_each_read_is_a_copy(lab: Lab, tmp_path: Path) -> None:
    store = _store(lab, tmp_path / "site.db")
    try:
        first = store.site_settings()
        first.ccm_token_lifetime_minutes += 100
        assert store.site_settings().ccm_token_lifetime_minutes == first.ccm_token_lifetime_minutes - 100
    finally:
        store.dispose()


@pytest.mark.parametrize("url", ["postgresql+psycopg://u@h/db", "sqlite://", "sqlite:///:memory:"])
def test_no_watch_without_a_sqlite_file(url: str) -> None:
    assert Watch.of(url, 1.0) is None


def test_two_first_reads_at_once_open_one_watch(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 10: two watches on one store would count data_version each from its own start, and a version kept
    from one compared with the other's could serve rows read before a commit (cached_property takes no lock from
    Python 3.12 on). Two threads asking first at once open one watch: the second waits for the first's."""
    store = _store(lab, tmp_path / "site.db")
    opened: list[Watch[object] | None] = []
    both_inside = threading.Barrier(2)
    open_watch = Watch.of

    def opening(url: str, busy_timeout: float) -> Watch[object] | None:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_inside.wait(timeout=0.5)  # passes only if the other thread is opening one too
        opened.append(open_watch(url, busy_timeout))
        return opened[-1]

    monkeypatch.setattr(Watch, "of", opening)
    try:
        threads = [threading.Thread(target=store.data_version) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(opened) == 1 and store._settings_watch is opened[0]
    finally:
        store.dispose()
        for w in opened[1:]:
            if w is not None:
                w.close()
