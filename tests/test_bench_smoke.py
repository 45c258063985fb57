"""`cmglab bench --quick` end to end: every section of the report is written, as JSON and Markdown, and
nothing that should succeed failed. It asserts no speed: the benchmarks are measurements, not tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SECTIONS = ("ceiling", "services", "cmg_path", "onboarding", "connections", "profiles", "storm", "workers")


def only_ok(rows: list[dict[str, Any]], ok: frozenset[str] = frozenset({"200"})) -> None:
    for row in rows:
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["statuses"] and set(row["statuses"]) <= ok, row  # JSON keys: the status codes as strings


@pytest.mark.timeout(600)  # a shared machine: every section at tiny sizes still takes minutes
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # a process of its own: the bench pins itself to a CPU and lifts its open-files limit
    bench = subprocess.Popen(
        [sys.executable, "-m", "cmglab", "bench", "--quick", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            stdout, stderr = bench.communicate(timeout=480)  # bounded inside too: each section has a budget
        except subprocess.TimeoutExpired:
            bench.terminate()  # SIGTERM, not a kill: the bench unwinds and stops the services it started
            stdout, stderr = bench.communicate(timeout=60)
            raise AssertionError("the quick bench ran past 480 s:\n" + stdout[-3000:] + stderr[-3000:]) from None
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert set(SECTIONS) <= set(report) and report["settings"]["hold"] == 200
    for number, key in enumerate(SECTIONS, 1):
        assert f"## {number}. " in markdown and report[key]["title"].startswith(f"{number}. ")

    only_ok(report["ceiling"]["rows"])
    crypto, inventory = report["ceiling"]["tables"]  # the floor's parts, timed in the same run
    assert {r["operation"] for r in crypto["rows"]} >= {
        "rsa_sign",
        "rsa_verify",
        "jwt_encode",
        "jwt_decode",
        "pbkdf2",
        "rsa_oaep",
        "tls_handshake",
    }
    assert all(r["cpu_ms"] > 0 for r in crypto["rows"]) and all(r["floor_ms"] > 0 for r in inventory["rows"])
    assert report["failed"] == []  # no section failed or ran out of its budget
    only_ok(report["services"]["rows"], frozenset({"200", "201"}))  # a DRS join answers 201 Created
    # a row for every endpoint of the inventory that is measured alone (the policy body and CMG forwarding
    # are parts of other rows)
    measured = {row["name"] for row in report["services"]["rows"]}
    assert {r["endpoint"] for r in inventory["rows"]} - measured == {
        "MP secret policy body",
        "CMG + connection point forwarding one request",
    }
    device_token = next(r for r in report["services"]["rows"] if r["name"].startswith("Entra device token"))
    assert device_token["requests_per_op"] == 2  # its srv_challenge nonce, then the signed request
    only_ok(report["cmg_path"]["rows"])
    for row in report["services"]["rows"] + report["cmg_path"]["rows"]:  # every hot endpoint has its floor
        assert row["floor_ms"] > 0 and row["ratio_to_floor"] > 0 and row["cpu_ratio_to_floor"] > 0, row
    assert all(row["ratio_to_mp_direct"] > 0 and row["server_cpu_ms"] > 0 for row in report["cmg_path"]["rows"])

    onboarding = report["onboarding"]
    assert [(r["devices"], r["succeeded"], r["failed"]) for r in onboarding["rows"]] == [(5, 5, 0)]
    memory = onboarding["tables"][0]["rows"]
    assert {r["service"] for r in memory} >= {"entra", "management-point", "cmg", "cmg-connection-point"}
    assert all(r["peak_rss_mb"] >= r["rss_start_mb"] > 0 for r in memory)
    floor = {r["service"]: r for r in onboarding["tables"][1]["rows"]}
    assert floor["total"]["floor_ms"] > 0 and floor["entra"]["signatures"] > 0 and floor["entra"]["pbkdf2"] == 1
    assert all(r["measured_cpu_ms"] for r in floor.values())
    steps = {r["step"] for r in onboarding["tables"][2]["rows"]}
    assert {"join", "registration", "policy (assignments)", "whole onboarding"} <= steps

    held = report["connections"]["rows"][0]
    assert held["held"] == held["target"] == held["still_answering"] == 200 and held["open_failures"] == 0
    assert held["established_at_cmg"] >= 200 and held["cmg_rss_held_mb"] > 0
    latency, failures = report["connections"]["tables"]
    assert {r["held"] for r in latency["rows"]} == {"0", "200"} and failures["rows"] == []
    only_ok(latency["rows"])

    storms = report["storm"]["rows"]
    assert [r["kind"] for r in storms] == ["silent", "half ClientHello", "whole ClientHello"]
    assert all(r["connections"] == 200 and r["real_client_served"] and r["rss_after_mb"] > 0 for r in storms)

    scaled = report["workers"]["rows"]
    assert sorted({r["workers"] for r in scaled}) == [1, 2] and all(r["scaling"] for r in scaled)
    only_ok(scaled)

    profiles = report["profiles"]
    assert profiles["profiled"] == [] and "Not profiled" in profiles["note"]
    fixes = profiles["tables"][0]["rows"]
    assert fixes and all(f["after_rps"] for f in fixes)  # each fix's scenario was measured in this run
