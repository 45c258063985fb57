"""The bench's section guard (issue 20): a section that raises or runs past its budget becomes a stub that
says why, the sections after it still run, and the report lists what failed first."""

from __future__ import annotations

import threading
from pathlib import Path

from cmglab.tools.bench import report
from cmglab.tools.bench.guard import Guard, cleanup


def test_a_failing_and_a_hanging_section_are_reported_and_the_rest_runs(tmp_path: Path) -> None:
    guard = Guard()

    def broken() -> dict[str, object]:
        raise RuntimeError("entra not healthy after 30s")

    def hangs() -> dict[str, object]:
        threading.Event().wait(60)  # never set: only the budget ends it
        return {"title": "2. never"}

    sections = {
        "one": guard.section("one", "1. One", 5, broken),
        "two": guard.section("two", "2. Two", 0.2, hangs),
        "three": guard.section(
            "three", "3. Three", 5, lambda: {"title": "3. Three", "columns": ["a"], "rows": [{"a": 1}]}
        ),
    }
    assert [f["section"] for f in guard.failed] == ["one", "two"]
    assert sections["one"]["failed"].startswith("RuntimeError: entra not healthy")
    assert "SectionTimeout" in sections["two"]["failed"] and "budget" in sections["two"]["failed"]
    assert sections["three"]["rows"] == [{"a": 1}]
    _, md = report.write(tmp_path, sections, failed=guard.failed)
    text = md.read_text()
    assert "**Failed:** 1. One (one): RuntimeError" in text and "2. Two (two): SectionTimeout" in text
    assert "## 1. One (FAILED)" in text and "## 3. Three" in text


def test_a_budget_is_not_swallowed_by_except_exception() -> None:
    guard = Guard()
    swallowed = threading.Event()

    def catches_everything() -> dict[str, object]:
        try:
            threading.Event().wait(60)  # never set: only the budget ends it
        except Exception:  # code a section runs may catch broadly; the budget must still end the section
            swallowed.set()
        return {"title": "1. ran on"}

    stub = guard.section("one", "1. One", 0.2, catches_everything)
    assert not swallowed.is_set() and "SectionTimeout" in stub["failed"]
    assert guard.failed[0]["timed_out"] is True


def test_clean_up_runs_to_its_end_although_the_budget_expires_meanwhile() -> None:
    guard = Guard()
    stopped = threading.Event()

    def section() -> dict[str, object]:
        try:
            return {"title": "1. One"}
        finally:
            with cleanup():  # the alarm is disarmed: the clean-up outlives the budget and is not cut short
                threading.Event().wait(0.4)
                stopped.set()

    assert guard.section("one", "1. One", 0.1, section) == {"title": "1. One"}
    assert stopped.is_set() and guard.failed == []


def test_a_section_that_raised_is_not_marked_timed_out() -> None:
    guard = Guard()

    def broken() -> dict[str, object]:
        raise RuntimeError("no")

    guard.section("one", "1. One", 5, broken)
    assert guard.failed[0]["timed_out"] is False
