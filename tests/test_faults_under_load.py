"""Faults under load, CI-sized: a fleet onboards in a lab of its own while the connection point, the MP
and the CMG are killed and restarted, the site database is write-locked past the connection point's
timeout, and `/_lab/faults` delays, drops and fails requests; then every device runs its next cycle.
The goals of issue 10: nothing a client completed is lost, no request hangs past its timeout, every
device that failed recovers on its next cycle; and the clients' logs show how they retried."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cmglab.tools.reliability import faults, underload

DEVICES = 32  # enough that every fault lands among devices in flight, small enough for CI
# what the clients wrote while riding the faults out: CCMHTTP's and CcmMessaging's own lines, then the retry
SAID = [
    r"\[CCMHTTP\] ERROR: URL=https://\S+, Port=\d+, Options=\d+, Code=\d+, Text=\w+",
    r"\[CCMHTTP\] ERROR INFO: StatusCode=5\d\d StatusText=\w",
    r"Successfully queued event on HTTP/HTTPS failure for server 'cmg\.lab\.test'\.",
    r"Post to https://\S+/ccm_system_tokenauth/request failed with 0x87d00231\.",
    r"Failed to send message '\{[0-9A-F-]{36}\}' to endpoint '\w+' \(attempt 1 of 3\): .*Will retry in",
    r"Failed to get CCM token \(attempt 1 of 3\): .*Will retry in 0\.5 second\(s\)\.",
]


def test_faults_under_load_lose_nothing_and_every_device_recovers(tmp_path: Path) -> None:
    report = underload.run(tmp_path / "results", DEVICES, concurrency=8, upstream_timeout=2.0, lab_dir=tmp_path / "run")
    data = json.loads((tmp_path / "results" / "faults.json").read_text())
    assert (tmp_path / "results" / "faults.md").read_text().startswith("# Faults under load")
    assert data["goals"] == {
        "completed operations lost": 0,
        "requests left hanging": 0,
        "devices that did not recover": 0,
    }, report.markdown()
    assert not report.invariant_violations, report.invariant_violations
    # each fault was applied once, without error, while devices were onboarding
    applied = [f.fault for f in report.faults]
    assert applied == [f.name for f in faults.schedule(upstream_timeout=2.0, client_timeout=10.0, concurrency=8)]
    assert [f for f in report.faults if f.error or f.devices_active == 0] == []
    # the faults were felt (the clients saw 5xx answers and unanswered requests) and ridden out by retrying
    assert report.client_requests["no reply"] > 0
    assert {502, 503, 504} <= set(report.client_requests["by status"])
    retries = report.retries
    assert retries["CcmMessaging message sent again"] > 0 and retries["CCM_STS request sent again"] > 0
    assert retries["[CCMHTTP] ERROR lines"] > 0
    assert retries["RegTask slept, registered again"] + retries["ccmsetup /retry"] > 0
    assert report.checked["registrations the clients were told of"] >= DEVICES
    logs = "\n".join(log.read_text(errors="replace") for log in (tmp_path / "run" / "fleet").rglob("*.log"))
    assert all(re.search(line, logs) for line in SAID), [line for line in SAID if not re.search(line, logs)]
    assert data["goals_met"], report.markdown()
