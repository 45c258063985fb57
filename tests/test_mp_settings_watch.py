"""The MP's site settings read per request, skipped while nothing was committed to its SQLite file
(services/management_point/settings_watch.py, issue 20): a change still applies from the next read, whoever
commits it (this store, another store on the file as `cmglab site set` is, a bare connection); the read is skipped
only while nothing at all was committed; each read hands out a copy."""

from __future__ import annotations

import sqlite3
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
