"""ccmsetup's other return codes and `/retry:`, against the running lab: 8 (another ccmsetup runs on
the device), 10 (the client package does not match its manifest), and a site-contact failure that
`/retry:` rides out while the same failure without it exits 6."""

from __future__ import annotations

import fcntl
from pathlib import Path

from cmglab.runtime.lab import Lab
from tests.support.agent import assert_lines
from tests.support.client import SERVICES, assert_clean, ccmhostname, ccmsetup, install, joined_device
from tests.support.lab import lab_client, lab_fixture

services = lab_fixture(*SERVICES, autouse=True)


def test_already_running_is_exit_8(lab: Lab, tmp_path: Path) -> None:
    device = joined_device(lab, tmp_path / "dev")
    lock_path = device.ccmsetup_dir / "ccmsetup.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the other ccmsetup
        r = install(lab, device)
    assert r.returncode == 8, r.stdout + r.stderr
    assert_clean(device)
    assert install(lab, device).returncode == 0  # the other one has finished


def test_package_not_matching_its_manifest_is_exit_10(lab: Lab, tmp_path: Path) -> None:
    msi = lab.content_dir / lab.config.site.client_package_id / "client.msi"
    original = msi.read_bytes()
    device = joined_device(lab, tmp_path / "dev")
    try:
        msi.write_bytes(original + b"tampered")  # what the site serves no longer matches ccmsetup.xml
        r = install(lab, device)
    finally:
        msi.write_bytes(original)
    assert r.returncode == 10, r.stdout + r.stderr
    assert_lines(
        device,
        "ccmsetup.log",
        r"client\.msi does not match the hash in the ccmsetup manifest",
        r"CcmSetup is exiting with return code 10",
    )
    assert_clean(device)
    assert install(lab, device).returncode == 0


def test_retry_rides_out_a_site_contact_failure(lab: Lab, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {lab.admin_token()}"}
    fault = {"path": "AADAuthInfo", "status": 503, "times": 1}
    device = joined_device(lab, tmp_path / "dev")
    with lab_client(lab) as c:
        assert c.post(f"{lab.url('cmg')}/_lab/faults", json=fault, headers=auth).status_code == 201
        assert install(lab, device).returncode == 6  # no /retry: ccmsetup gives up at once
        assert_clean(device)

        assert c.post(f"{lab.url('cmg')}/_lab/faults", json=fault, headers=auth).status_code == 201
        r = ccmsetup(device, f"CCMHOSTNAME={ccmhostname(lab)}", "SMSSITECODE=MEM", "/retry:0.02")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_lines(device, "ccmsetup.log", r"Next retry in 0\.02 minute\(s\)")
