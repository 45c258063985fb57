"""Registration's plain-SQL path (management_point/registration.py `_admit_plain`) against a record deleted
between its read and its write, and its bulk-token lookup beside the ORM path's. The MP runs in this process
(its own lab, real sockets) so that the race is made at the exact point, without sleeps: the unit's read of
the record deletes it from another connection right after reading it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select

from cmglab.runtime.fastpath import LeanRoutes
from cmglab.runtime.lab import Lab
from cmglab.runtime.site_system import site_system
from cmglab.services.management_point import registration
from cmglab.services.management_point.app import create_app
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.store import Client, IssuedToken
from cmglab.services.management_point.transport import IISPaths
from cmglab.services.management_point.units import ClientKeys, SiteUnit
from cmglab.wire import ccm_messaging as cm
from cmglab.wire.kinds import ConflictStatus, RegistrationKind
from tests.support.lab import new_lab, set_site
from tests.support.mp import Device, ccm_post, client, http_url, register, reply_body, wait_log
from tests.support.threaded import ThreadedService


@pytest.fixture(scope="module")
def race_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("race") / "lab")


@pytest.fixture(scope="module")
def parts(race_lab: Lab) -> Iterator[Parts]:
    mp = Parts.from_lab(race_lab)
    app = IISPaths(LeanRoutes(create_app(mp)))
    service = site_system(
        race_lab, "management-point", app, http_port=race_lab.config.ports.management_point_http, http="any-method"
    )
    with ThreadedService(service):
        set_site(race_lab, auto_approve="all")  # an approved client gets its client token at registration
        yield mp


def _client_rows(mp: Parts, sms_id: str) -> list[str]:
    with mp.store.session() as s:
        return list(s.scalars(select(Client.sms_id).where(Client.sms_id == sms_id)))


def _token_rows(mp: Parts, sms_id: str) -> list[str]:
    with mp.store.session() as s:
        return list(s.scalars(select(IssuedToken.kind).where(IssuedToken.sms_id == sms_id)))


def test_a_record_deleted_between_read_and_write_is_never_registered_unwritten(
    race_lab: Lab, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner re-registers while its record is deleted (an admin's delete from another connection, right
    after the plain unit read it): the UPDATE hits no row. The answer must describe what the site holds: a
    REGISTERED reply with a client token names a client record that exists (the ORM path's outcome for a
    request arriving after the delete: the record made again). Old code: REGISTERED with a client token and an
    issued_tokens row, no client row."""
    device = Device("RACE01")
    first = register(race_lab, device)
    assert first["Status"] == "0" and first["PreAuthToken"]
    sms_id = first["SMSID"]
    assert _client_rows(parts, sms_id) == [sms_id]

    read = SiteUnit.client
    deleted: list[str] = []

    def read_then_deleted(unit: SiteUnit, who: str) -> ClientKeys | None:
        keys = read(unit, who)
        if keys is not None and keys.sms_id == sms_id and not deleted:
            with parts.store.session() as s:  # another connection, committed before the unit writes
                s.execute(delete(Client).where(Client.sms_id == sms_id))
            deleted.append(sms_id)
        return keys

    monkeypatch.setattr(SiteUnit, "client", read_then_deleted)
    with client(race_lab) as c:
        reply = ccm_post(c, f"{http_url(race_lab)}/ccm_system/request", device.registration_message(sms_id=sms_id))
    again = dict(cm.parse_xml(reply_body(reply)).attrib)
    assert deleted == [sms_id]  # the race was made at the point between the read and the write
    assert again["Status"] == "0" and again["SMSID"] == sms_id and again["PreAuthToken"]
    assert _client_rows(parts, sms_id) == [sms_id]  # the registered client exists
    assert _token_rows(parts, sms_id) == ["client", "client"]  # the first registration's and this one's
    wait_log(race_lab, "MP_RegistrationManager.log", rf"The record of {sms_id} was deleted while its registration")


def _bulk_registrant(mp: Parts, device: Device, guid: str) -> registration.Registrant:
    from cmglab.runtime.certinfo import thumbprint

    return registration.Registrant(
        kind=RegistrationKind.BULK,
        proposed=None,
        signing=device.cert,
        encryption=device.cert,
        signing_tp=thumbprint(device.cert),
        netbios=device.name,
        fqdn=device.fqdn,
        agent_identity="CCMSetup.exe",
        agent_version="5.00.8968.1000",
        domain_account=None,
        internet=False,
        bulk_guid=guid,
    )


def _verdicts(mp: Parts, who: registration.Registrant) -> list[Any]:
    """The plain path's and the ORM path's answer to WHO (each in its own transaction)."""
    settings = mp.store.site_settings()
    answers: list[Any] = []
    for admit in (
        lambda: mp.store.retrying_unit(lambda u: registration._admit_plain(mp, u, who, settings)),
        lambda: mp.store.retrying(lambda s: registration._admit(mp, s, who, settings)),
    ):
        try:
            outcome = admit()
            answers.append(outcome.status if outcome is not None else None)
        except registration.RegistrationRefused as refused:
            answers.append(f"refused: {refused}")
    return answers


@pytest.mark.parametrize("blocked", [False, True])
def test_a_bulk_tokens_guid_is_looked_up_by_one_rule_on_both_paths(parts: Parts, blocked: bool) -> None:
    """The bulk token's GUID in any case names the same token on the plain and the ORM path (the site keeps
    GUIDs lower-cased): both admit it, or both refuse it when blocked. Old code: the ORM path looked the GUID
    up as is and called an upper-case one never issued (refused) where the plain path admitted it."""
    guid = str(uuid.uuid4())
    now = datetime.now(UTC)
    parts.store.add_bulk_token(guid, 60, now - timedelta(minutes=1), now + timedelta(hours=1))
    if blocked:
        assert parts.store.set_bulk_blocked(guid, True)
    plain, orm = _verdicts(parts, _bulk_registrant(parts, Device("BULK01"), guid.upper()))
    assert plain == orm
    assert str(plain).startswith("refused") if blocked else plain == registration.REGISTERED, plain


def test_a_merged_record_deleted_between_read_and_write_is_registered_again_not_a_500(
    race_lab: Lab, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ORM path's side of the race above (review 6): a conflicting record the admin merged is updated there
    (not on the plain path), and an admin's delete of that record from another connection right after the
    session read it made the flush's UPDATE hit no row: SQLAlchemy's StaleDataError escaped register() as a
    bare 500. It is decided again, as the plain path does, on what the site holds now: the record made again,
    REGISTERED, with the same line in MP_RegistrationManager.log. Old code: HTTP 500, no client row."""
    owner, other = Device("MERGEA"), Device("MERGEB")
    sms_id = register(race_lab, owner)["SMSID"]
    with client(race_lab) as c:  # a conflicting record (automatic: a new record for now)
        ccm_post(c, f"{http_url(race_lab)}/ccm_system/request", other.registration_message(sms_id=sms_id))
    (conflict,) = [c for c in parts.store.conflicts() if c["sms_id"] == sms_id]
    assert parts.store.resolve_conflict(conflict["id"], ConflictStatus.MERGE) is not None

    owned_by = registration._owned_by
    deleted: list[str] = []

    def read_then_deleted(existing: Any, who: registration.Registrant) -> bool:
        if isinstance(existing, Client) and existing.sms_id == sms_id and not deleted:  # the ORM path's read
            with parts.store.session() as s:  # another connection, committed before the session writes
                s.execute(delete(Client).where(Client.sms_id == sms_id))
            deleted.append(sms_id)
        return owned_by(existing, who)

    monkeypatch.setattr(registration, "_owned_by", read_then_deleted)
    with client(race_lab) as c:
        reply = ccm_post(c, f"{http_url(race_lab)}/ccm_system/request", other.registration_message(sms_id=sms_id))
    assert deleted == [sms_id]  # the race was made between the ORM path's read and its write
    assert reply.status_code == 200, reply.status_code
    again = dict(cm.parse_xml(reply_body(reply)).attrib)
    assert again["Status"] == "0" and again["SMSID"] == sms_id, again
    assert _client_rows(parts, sms_id) == [sms_id]  # the registered client exists
    wait_log(race_lab, "MP_RegistrationManager.log", rf"The record of {sms_id} was deleted while its registration")
