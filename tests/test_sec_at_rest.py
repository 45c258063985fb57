"""Issue 15, at rest: the services' SQLite databases (and their WAL files) are 0600, and the site database
holds policy bodies sealed with the site key (`<lab>/site-key`, 0600): the NAA secret policy's obfuscated
(reversible) username and password are nowhere in the database files, and a policy still reads back whole."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cmglab.runtime.lab import Lab
from cmglab.services.management_point import policy_crypto
from cmglab.services.management_point.sealing import Sealer, site_key
from tests.support.lab import lab_fixture


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


running = lab_fixture("entra", "management-point")


def test_database_files_are_owner_only(running: Lab) -> None:
    files = sorted((running.dir / "data").glob("*.db*"))
    assert any(f.name == "management-point.db" for f in files) and any(f.name == "entra.db" for f in files)
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert mode(running.dir / "site-key") == 0o600


def test_the_naa_secret_is_not_in_the_site_database(running: Lab) -> None:
    naa = running.config.site.network_access_account
    data = b"".join(f.read_bytes() for f in (running.dir / "data").glob("management-point.db*"))
    for secret in (
        naa.password,
        policy_crypto.obfuscate_secret(naa.password),
        policy_crypto.obfuscate_secret(naa.username),
    ):
        assert secret.encode() not in data and secret.encode("utf-16-le") not in data


def test_sealing_round_trip(tmp_path: Path) -> None:
    key = site_key(tmp_path)
    assert site_key(tmp_path) == key and mode(tmp_path / "site-key") == 0o600
    sealer = Sealer(key)
    sealed = sealer.seal("<policy>secret</policy>")
    assert "secret" not in sealed and sealer.open(sealed) == "<policy>secret</policy>"
    assert sealer.open("<policy>plain</policy>") == "<policy>plain</policy>"  # an older database's row
    with pytest.raises(ValueError):
        Sealer(site_key(tmp_path / "other")).open(sealed)
