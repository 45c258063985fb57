"""Policy assignments in process (issue 20): the signer's row and the policies kept while nothing was committed to the
MP's SQLite file (management_point/assignment_reads.py), and the client's last policy request written only when the
one stored is older than policy.REQUEST_TIME_RESOLUTION. A reply is still made from the rows as they are now (an
approval, a new signing certificate, a deleted record, whoever commits it), a client not found is never kept, the
kept signers stay bounded under a flood of clients, and every write due is committed before the reply."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cmglab.runtime.lab import Lab
from cmglab.services.management_point import assignment_reads, policy
from cmglab.services.management_point.caller import Caller
from cmglab.services.management_point.messages import dispatch
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.units import SiteUnit
from cmglab.wire import ccm_messaging as cm
from tests.support.lab import new_lab
from tests.support.mp import Device

TOKENAUTH = Caller(vdir="ccm_system_tokenauth", ccm_claims={"DeviceId": "bench"})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("assignments") / "lab")


@pytest.fixture
def mp(lab: Lab) -> Iterator[Parts]:
    parts = Parts.from_lab(lab)
    yield parts
    parts.store.dispose()


def _register(mp: Parts, device: Device) -> str:
    reply = dispatch(mp, device.registration_message(), cm.CONTENT_TYPE, Caller(vdir="ccm_system"))
    assert reply.status == 200, reply.reason
    _, body = cm.decode_reply(reply.body, reply.content_type)
    device.sms_id = cm.parse_xml(body).get("SMSID")
    assert device.sms_id
    return device.sms_id


def _assignments(mp: Parts, device: Device) -> str | None:
    """The ReplyAssignments XML, or None for the empty reply."""
    reply = dispatch(
        mp, device.signed_message("MP_PolicyManager", device.assignments_body()), cm.CONTENT_TYPE, TOKENAUTH
    )
    assert reply.status == 200, reply.reason
    return cm.decode_reply(reply.body, reply.content_type)[1] if reply.body else None


def _db(lab: Lab) -> Path:
    return Path(lab.database_url("management-point").removeprefix("sqlite:///"))


def _last_request(lab: Lab, sms_id: str) -> str | None:
    """The stored time as the table keeps it (to the microsecond), read from another connection."""
    with sqlite3.connect(_db(lab)) as bare:
        row = bare.execute("SELECT last_policy_request FROM clients WHERE sms_id = ?", (sms_id,)).fetchone()
    return str(row[0]) if row[0] is not None else None


def test_a_client_asking_again_within_the_resolution_is_not_written_again(
    mp: Parts, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = Device("KEPT01")
    sms_id = _register(mp, device)
    touched: list[str] = []
    touch = SiteUnit.touch

    def counted(unit: SiteUnit, who: str, when: datetime) -> None:
        touched.append(who)
        touch(unit, who, when)

    monkeypatch.setattr(SiteUnit, "touch", counted)
    assert _assignments(mp, device) and touched == [sms_id]  # the first request is recorded, before its reply
    first = _last_request(lab, sms_id)
    assert first is not None
    assert _assignments(mp, device) and touched == [sms_id]  # within the resolution: nothing written
    assert _last_request(lab, sms_id) == first
    monkeypatch.setattr(policy, "REQUEST_TIME_RESOLUTION", timedelta(0))  # the stored one is now old enough
    assert _assignments(mp, device) and touched == [sms_id, sms_id]
    assert (_last_request(lab, sms_id) or "") > first


def test_the_reply_follows_the_rows_as_they_are_now_whoever_commits(mp: Parts, lab: Lab) -> None:
    device = Device("KEPT02")
    sms_id = _register(mp, device)
    assert mp.store.approve(sms_id, True)
    assert 'PolicyCategory="NAAConfig"' in (_assignments(mp, device) or "")
    assert _assignments(mp, device)  # kept now
    assert mp.store.approve(sms_id, False)  # this process's ORM session: no secret policy from the next request
    assert 'PolicyCategory="NAAConfig"' not in (_assignments(mp, device) or "")
    other = Device("KEPT02")  # another key: registered for SMS_ID from another connection (another process)
    with sqlite3.connect(_db(lab)) as bare:
        bare.execute("UPDATE clients SET signing_cert = ? WHERE sms_id = ?", (cm.cert_hex(other.cert), sms_id))
    assert _assignments(mp, device) is None  # the old key no longer signs for it
    other.sms_id = sms_id
    assert _assignments(mp, other)
    with sqlite3.connect(_db(lab)) as bare:
        bare.execute("DELETE FROM clients WHERE sms_id = ?", (sms_id,))
    assert _assignments(mp, other) is None  # a deleted record signs nothing


def test_a_client_not_found_is_never_kept(mp: Parts) -> None:
    device = Device("KEPT03")
    device.sms_id = "GUID:" + "0" * 8 + "-0000-0000-0000-" + "0" * 12
    assert _assignments(mp, device) is None
    assert device.sms_id not in mp.assignment_reads.now()
    sms_id = _register(mp, device)
    assert _assignments(mp, device)  # read, and its time written (a commit: nothing kept from before it)
    assert _assignments(mp, device) and sms_id in mp.assignment_reads.now()


def test_the_kept_signers_stay_bounded_under_a_flood_of_clients(mp: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [Device(f"FLOOD{n:02}") for n in range(5)]
    for device in devices:
        _register(mp, device)
    kept = mp.assignment_reads.now()
    size = len(kept.signer(devices[0].sms_id or "").signing_cert)  # type: ignore[union-attr]
    monkeypatch.setattr(assignment_reads, "MAX_CLIENTS", 3)
    for device in devices:
        assert kept.signer(device.sms_id or "") is not None
        assert len(kept) <= 3
    assert [d.sms_id in kept for d in devices] == [False, False, True, True, True]  # the oldest went first
    monkeypatch.setattr(assignment_reads, "MAX_CHARS", 2 * size + 100)  # by size: two certificates' worth
    for device in devices:
        assert kept.signer(device.sms_id or "") is not None
        assert len(kept) <= 2 and kept.chars <= 2 * size + 100


def test_without_a_version_every_request_reads(mp: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL (no data_version): the signer and the policies read in one unit per request, nothing kept."""
    device = Device("KEPT04")
    _register(mp, device)
    monkeypatch.setattr(mp.store, "data_version", lambda: None)
    units = 0
    unit = mp.store.unit

    def counted() -> object:
        nonlocal units
        units += 1
        return unit()

    monkeypatch.setattr(mp.store, "unit", counted)
    assert _assignments(mp, device)  # read, and the first request's time written: two units
    assert units == 2
    assert _assignments(mp, device)  # read again (one unit), no write
    assert units == 3


def test_a_request_body_is_parsed_once_per_text_and_a_refusal_never_kept() -> None:
    policy._remembered_fields.cache_clear()
    device = Device("KEPT05")
    device.sms_id = "GUID:00000000-0000-0000-0000-000000000005"
    body = device.assignments_body()
    assert policy._request_of(body) == (device.sms_id, "Machine")
    assert policy._request_of(body) == (device.sms_id, "Machine")
    assert policy._remembered_fields.cache_info().hits == 1
    large = body.replace("<ServerCookie />", "<ServerCookie />" + " " * policy.REMEMBERED_BODY)
    assert policy._request_of(large) == (device.sms_id, "Machine")
    assert policy._remembered_fields.cache_info().currsize == 1  # over the size: parsed, not kept
    for _ in range(2):
        with pytest.raises(cm.CcmMessageError):
            policy._request_of("<RequestSomethingElse/>")
    assert policy._remembered_fields.cache_info().currsize == 1


def test_a_body_naming_another_client_is_refused_every_time(mp: Parts) -> None:
    """Attack: a registered client signs a RequestAssignments naming another client's ClientID, to be answered as
    that client. The signer decides who asks: the empty reply, each time (the parsed body is remembered, the check
    is not)."""
    victim, attacker = Device("VICTIM01"), Device("ATTACK01")
    _register(mp, victim)
    _register(mp, attacker)
    body = attacker.assignments_body().replace(attacker.sms_id or "", victim.sms_id or "")
    for _ in range(2):
        reply = dispatch(mp, attacker.signed_message("MP_PolicyManager", body), cm.CONTENT_TYPE, TOKENAUTH)
        assert reply.status == 200 and reply.body == b""
