"""The README's troubleshooting table, row by row (issue 21): each failure is caused for real, and every
`LOG`: "text" pair the row's symptom names is then found in that log; the row's remedy is applied and the
install then succeeds. Rows: CRL unreachable, blocked bulk token, expired bulk token, revoked certificate."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from tests.support.agent import log_of, new_device, run
from tests.support.client import enrolled_then_revoked, install, joined_device
from tests.support.lab import lab_fixture

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDED = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")


services = lab_fixture(*NEEDED, autouse=True)


def row(cause: str) -> str:
    """The table row whose cause column says `cause` in bold."""
    table = README.read_text().split("## Troubleshooting", 1)[1].split("\n\n", 2)[1]
    found = [line for line in table.splitlines() if f"**{cause}**" in line]
    assert len(found) == 1, f"no single troubleshooting row for {cause!r}"
    return found[0]


def pointers(text: str) -> list[tuple[str, str]]:
    """The (log file, quoted text) pairs a symptom names: `ccmsetup.log`: "..."."""
    symptom = text.split("|")[1]
    pairs = re.findall(r"`(?:<lab>/logs/processes/)?([\w.-]+\.(?:log|out))`: \"([^\"]+)\"", symptom)
    assert pairs, f"the symptom names no log line: {symptom}"
    return pairs


def read_log(lab: Lab, device: Device, name: str) -> str:
    if name == "ccmsetup.log":
        return log_of(device, name)
    if name.endswith(".out"):
        path = lab.dir / "logs" / "processes" / name
    else:
        service = {"CCM_STS.log": "management-point", "CMGService.log": "cmg"}[name]
        path = lab.dir / "logs" / service / name
    return path.read_text(errors="replace")


def assert_row(lab: Lab, device: Device, cause: str, before: dict[str, int]) -> None:
    """Every log line the row points to was written by this failure (after `before`: each log's size)."""
    for name, text in pointers(row(cause)):
        deadline = time.monotonic() + 15  # the site's logs are written as the request ends
        while text not in read_log(lab, device, name)[before.get(name, 0) :]:
            assert time.monotonic() < deadline, f"{cause}: {name} lacks {text!r}"
            time.sleep(0.2)


def sizes(lab: Lab, device: Device, cause: str) -> dict[str, int]:
    return {name: len(read_log(lab, device, name)) if name != "ccmsetup.log" else 0 for name, _ in pointers(row(cause))}


def cmglab(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    r = run("cmglab", *args, "--lab", str(lab.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def fails_then(lab: Lab, device: Device, cause: str, remedy: Callable[[], tuple[str, ...]], *extra: str) -> None:
    before = sizes(lab, device, cause)
    r = install(lab, device, *extra)
    assert r.returncode == 6, r.stdout + r.stderr
    assert_row(lab, device, cause, before)
    fixed = install(lab, device, *remedy())
    assert fixed.returncode == 0, fixed.stderr + log_of(device, "ccmsetup.log")[-3000:]


def test_crl_unreachable(lab: Lab, tmp_path: Path) -> None:
    cause = "CRL check is enabled"
    assert "/nocrlcheck" in row(cause)
    device = joined_device(lab, tmp_path / "dev")
    shutil.rmtree(device.crl_cache)  # never fetched the CRLs, and the CRL host's name goes nowhere
    pki = lab.config.hosts.pki
    device.write_hosts(
        [
            line if not line.startswith(f"{pki}:") else line.rsplit(":", 1)[0] + ":127.0.0.9"
            for line in device.hosts_path.read_text().splitlines()
        ]
    )
    fails_then(lab, device, cause, lambda: ("/nocrlcheck",))


def test_blocked_bulk_token(lab: Lab, tmp_path: Path) -> None:
    cause = "blocked"
    assert "bulk-token unblock GUID" in row(cause)
    bulk = json.loads(cmglab(lab, "bulk-token", "new", "--json").stdout)
    cmglab(lab, "bulk-token", "block", bulk["guid"])
    device = new_device(lab.dir, tmp_path / "dev")

    def unblock() -> tuple[str, ...]:
        cmglab(lab, "bulk-token", "unblock", bulk["guid"])
        return (f"/regtoken:{bulk['token']}",)

    fails_then(lab, device, cause, unblock, f"/regtoken:{bulk['token']}")


def test_expired_bulk_token(lab: Lab, tmp_path: Path) -> None:
    """Minted as BulkRegistrationTokenTool would have ten minutes ago, for one minute."""
    from cmglab.services.management_point.policy_defaults import default_policies
    from cmglab.services.management_point.store import Store

    cause = "expired"
    assert "bulk-token new" in row(cause)
    token, guid, start, end = lab.site_signer().bulk_token(minutes=1, now=datetime.now(UTC) - timedelta(minutes=10))
    Store(lab, policy_factory=default_policies).add_bulk_token(guid, 1, start, end)
    device = new_device(lab.dir, tmp_path / "dev")

    def new_token() -> tuple[str, ...]:
        return (f"/regtoken:{json.loads(cmglab(lab, 'bulk-token', 'new', '--json').stdout)['token']}",)

    fails_then(lab, device, cause, new_token, f"/regtoken:{token}")


def test_revoked_certificate(lab: Lab, tmp_path: Path) -> None:
    cause = "revoked"
    assert "cmglab device enrol --home DIR" in row(cause)
    device = new_device(lab.dir, tmp_path / "dev", "--name", "REVOKED2")
    enrolled_then_revoked(lab, device)
    time.sleep(1.1)  # the next certificate must expire later than the revoked one (whole seconds)

    def enrol() -> tuple[str, ...]:
        cmglab(lab, "device", "enrol", "--home", str(device.home))
        return ("/usepkicert",)

    fails_then(lab, device, cause, enrol, "/usepkicert")
