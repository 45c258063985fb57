"""What Entra's hot requests write, and when (issue 20): a device-signed request spends its srv_challenge nonce on its
own unit of work's connection, committed at once (a failure later still spends it; a request refused before the
nonce is checked leaves it usable; one request sent on several connections at once is answered once); the nonces
table has no rowid on SQLite (an older lab's rowid table works the same); a DRS join without a device quota writes
its device row only, and one with a quota still locks the user's row and counts again."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cmglab.core.labconfig import CONFIGMGR_CLIENT_APP_ID, CONFIGMGR_RESOURCE_URI
from cmglab.pki import builders as b
from cmglab.runtime.lab import Lab
from cmglab.services.entra import registration
from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.nonces import NonceKey
from cmglab.services.entra.parts import Parts
from tests.support.entra_device import new_key, signed_request
from tests.support.entra_units import JoinedDevice, device_token, drs_token, join_device, join_primary_user
from tests.support.lab import new_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("hot-writes") / "lab")


@pytest.fixture(scope="module")
def entra(lab: Lab) -> Iterator[Parts]:
    parts = Parts.from_lab(lab)
    yield parts
    parts.store.db.dispose()


@pytest.fixture(scope="module")
def joined(lab: Lab, entra: Parts) -> JoinedDevice:
    return join_primary_user(lab, entra)


def _request(joined: JoinedDevice, nonce: str, resource: str = CONFIGMGR_RESOURCE_URI, key: Any = None) -> str:
    payload = {
        "request_nonce": nonce,
        "resource": resource,
        "client_id": CONFIGMGR_CLIENT_APP_ID,
        "grant_type": "device_token",
    }
    return signed_request(joined.cert, key or joined.device_key, payload)


def _refused(lab: Lab, entra: Parts, request: str) -> int:
    with pytest.raises(AADSTSError) as refused:
        device_token(lab, entra, request)
    return refused.value.code


def _nonce_rows(entra: Parts, nonce: str) -> int:
    with entra.store.plain() as u:
        found = u.one("SELECT count(*) FROM nonces WHERE value = ?", (nonce,))
    return found[0] if found else 0


def test_a_request_that_fails_after_its_nonce_still_spends_it(lab: Lab, entra: Parts, joined: JoinedDevice) -> None:
    """Attack: replay a nonce whose request failed after the nonce was checked (an unknown resource, 500011). The
    spend is committed on the request's own connection before the failure rolls the rest of its unit back: the
    replay is refused for the nonce (50013), not answered again."""
    nonce = entra.store.issue_nonce(300)
    assert _refused(lab, entra, _request(joined, nonce, resource="https://unknown.example")) == 500011
    assert _nonce_rows(entra, nonce) == 1  # spent
    assert _refused(lab, entra, _request(joined, nonce)) == 50013


def test_a_request_refused_before_its_nonce_leaves_it_usable(lab: Lab, entra: Parts, joined: JoinedDevice) -> None:
    """A request signed with another key is refused (50155) before its nonce is looked at: bad input loses nothing,
    and the device's own request with that nonce is answered once, then refused."""
    nonce = entra.store.issue_nonce(300)
    assert _refused(lab, entra, _request(joined, nonce, key=new_key())) == 50155
    assert _nonce_rows(entra, nonce) == 0  # not spent
    assert device_token(lab, entra, _request(joined, nonce))["access_token"]
    assert _refused(lab, entra, _request(joined, nonce)) == 50013


def test_concurrent_requests_with_one_nonce_are_answered_once(lab: Lab, entra: Parts, joined: JoinedDevice) -> None:
    """Attack: send one signed request (one nonce) on several connections at once, to be answered more than once.
    Each spends the nonce on its own connection: one INSERT writes its row, every other finds it (50013)."""
    nonce, racers = entra.store.issue_nonce(300), 8
    request, start = _request(joined, nonce), threading.Barrier(racers)

    def race(_: int) -> int:
        start.wait()
        try:
            return 0 if device_token(lab, entra, request)["access_token"] else -1
        except AADSTSError as refused:
            return refused.code

    with ThreadPoolExecutor(racers) as pool:
        outcomes = sorted(pool.map(race, range(racers)))
    assert outcomes == [0] + [50013] * (racers - 1)


def test_the_nonces_table_has_no_rowid_and_an_older_rowid_table_works_the_same(lab: Lab, entra: Parts) -> None:
    database = lab.dir / "data" / "entra.db"
    with sqlite3.connect(database) as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'nonces'").fetchone()
    assert "WITHOUT ROWID" in sql.upper()
    with sqlite3.connect(database) as conn:  # the prune of expired spent nonces reads the key's range, not the table
        plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {st._NONCE_PRUNE_SQL}", (0,)))
    assert "USING PRIMARY KEY (expires_at<?)" in plan
    older = new_lab(lab.dir.parent / "older" / "lab")
    with sqlite3.connect(older.dir / "data" / "entra.db") as conn:  # the table as labs made before had it
        conn.execute("DROP TABLE IF EXISTS nonces")
        conn.execute(
            "CREATE TABLE nonces (value VARCHAR(128) NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (value))"
        )
    store = st.Store(older.database_url("entra"), older.config, NonceKey.of_lab(older))
    try:
        store.seed()
        nonce = store.issue_nonce(300)
        with store.plain() as u:
            assert store.consume_nonce(nonce, u) is True
        with store.plain() as u:
            assert store.consume_nonce(nonce, u) is False  # single use
    finally:
        store.db.dispose()


def _join_statements(entra: Parts, lab: Lab, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements a DRS join runs in its plain unit besides its reads (Plain.run), for a new device."""
    ran: list[str] = []
    run = st.Plain.run

    def recording(self: st.Plain, sql: str, params: tuple[Any, ...]) -> None:
        ran.append(sql)
        run(self, sql, params)

    user = lab.config.primary_tenant.users[0]
    token = drs_token(entra, lab.config.primary_tenant.tenant_id, user.upn, user.password)
    monkeypatch.setattr(st.Plain, "run", recording)
    joined = join_device(entra, token, user.upn)
    assert joined.reply["Certificate"]["Thumbprint"]
    return ran


def test_a_join_without_a_device_quota_writes_its_device_row_only(
    lab: Lab, entra: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab.config.primary_tenant, "max_devices_per_user", None)
    assert _join_statements(entra, lab, monkeypatch) == [registration.DEVICE_INSERT_SQL]


def test_a_join_with_a_device_quota_still_locks_the_users_row_before_it_counts_again(
    lab: Lab, entra: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quota's race (tests/test_units.py) is closed by the users row's lock: still taken when there is a quota."""
    monkeypatch.setattr(lab.config.primary_tenant, "max_devices_per_user", 1000)
    ran = _join_statements(entra, lab, monkeypatch)
    assert ran == [registration.LOCK_OWNER_SQL, registration.DEVICE_INSERT_SQL]


def test_the_join_reply_carries_the_thumbprint_of_the_certificate_it_carries(
    lab: Lab, entra: Parts, joined: JoinedDevice
) -> None:
    """The DER is encoded once for both: the thumbprint is still the SHA-1 of the certificate in RawBody, and the
    device row's."""
    assert joined.reply["Certificate"]["Thumbprint"] == b.sha1_thumbprint(joined.cert)
    with entra.store.session() as s:
        row = st.device_by_id(s, joined.device_id)
        assert row is not None and row.cert_thumbprint == b.sha1_thumbprint(joined.cert)
