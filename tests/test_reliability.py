"""The reliability campaign with a CI budget: schemathesis and the hand-made corpus against a lab of
its own, then the goals of issue 10 — no 5xx, no unhandled exception, no unexpected answer, no
database row that breaks an invariant — and every service tried."""

from __future__ import annotations

import json
from pathlib import Path

from cmglab.tools.reliability import campaign
from cmglab.tools.reliability.labview import SERVICES

CI_BUDGET = 75.0  # seconds, start-up included


def test_campaign_meets_its_goals(tmp_path: Path) -> None:
    report = campaign.run(tmp_path / "results", CI_BUDGET)
    data = json.loads((tmp_path / "results" / "report.json").read_text())
    assert (tmp_path / "results" / "report.md").read_text().startswith("# Reliability campaign")
    assert data["goals_met"], report.markdown()
    totals = data["totals"]
    assert totals["server_errors"] == totals["unhandled"] == totals["unexpected"] == 0
    assert totals["invariant_violations"] == 0
    assert all(data["services"][s]["inputs"] > 0 for s in SERVICES), data["services"]
    assert all(data["services"][s]["corpus"] > 0 for s in ("entra", "cmg", "management-point"))
    assert report.elapsed_s < CI_BUDGET + 60  # the corpus and the checks run after the fuzzing share
