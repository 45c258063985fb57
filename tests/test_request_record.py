"""The typed request record (cmglab/wire/requests.py): what `GET /_lab/requests` makes of it (in-process)."""

from __future__ import annotations

from datetime import datetime

from cmglab.wire.kinds import AuthKind
from cmglab.wire.requests import RequestRecord


def test_a_record_shows_what_was_learnt_and_the_recorders_nullable_fields() -> None:
    rec = RequestRecord(seq=7, service="demo", method="GET", url="https://x/a", path="/a", status=200)
    rec.started_at, rec.ended_at, rec.elapsed_ms = 1_700_000_000.25, 1_700_000_000.5, 250.0
    rec.authenticated(AuthKind.CCM_TOKEN, "GUID:1")
    rec.note(device_id="d1")
    doc = rec.as_dict()
    assert doc["seq"] == 7 and doc["status"] == 200 and doc["auth_kind"] == "ccm-token" and doc["device_id"] == "d1"
    assert datetime.fromisoformat(doc["time"]).timestamp() == 1_700_000_000.5
    assert datetime.fromisoformat(doc["started"]).timestamp() == 1_700_000_000.25
    # the recorder's nullable fields are there (null); what nothing learnt is left out
    assert doc["client_cert_subject"] is None and doc["traceparent"] is None and doc["user_agent"] is None
    assert not {"via", "result", "error", "reason", "fault", "started_at", "ended_at", "details"} & doc.keys()


def test_details_name_their_own_fields() -> None:
    rec = RequestRecord(path="/b")
    rec.update(result="refused: x", amr=["pwd"])
    assert rec.as_dict()["result"] == "refused: x" and rec.as_dict()["amr"] == ["pwd"]
