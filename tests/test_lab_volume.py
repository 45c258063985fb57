"""What the compose lab's `init` service (`cmglab init --lab /lab --compose`) does with a lab volume it did not
just make: a half-initialised one is completed, one from another lab version or a damaged one gets one clear
message and the way out (exit 2, once: init never restarts), never a traceback. And `cmglab device onboard`
never reuses a device of an earlier lab (its tenant is gone), so `docker compose run --rm client` after a
`down -v` that kept the devices volume still onboards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from cmglab.tools.devicecli import next_device_home


def cmglab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmglab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"COLUMNS": "400", "PATH": str(Path(sys.executable).parent)},
    )


def init_compose(lab: Path) -> subprocess.CompletedProcess[str]:
    return cmglab("init", "--lab", str(lab), "--compose")


def assert_clear_refusal(run: subprocess.CompletedProcess[str], reason: str) -> None:
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 2, out
    assert reason in out, out
    assert "docker compose --profile client down -v" in out and "cmglab init --force" in out, out
    assert "Traceback" not in out, out


def test_a_half_initialised_volume_is_completed(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    assert init_compose(lab).returncode == 0
    for part in ("admin-token", "hosts", "pki/ca-bundle.pem"):
        (lab / part).unlink()  # init stopped half-way: lab.json written, the rest missing
    tenant = json.loads((lab / "lab.json").read_text())["tenants"][0]["tenant_id"]
    again = init_compose(lab)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "admin-token" in again.stdout and (lab / "pki" / "ca-bundle.pem").exists()
    assert Lab.load(lab).config.primary_tenant.tenant_id == tenant  # the same lab, completed


def test_a_volume_of_another_lab_version_is_refused_with_the_way_out(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    assert init_compose(lab).returncode == 0
    config = json.loads((lab / "lab.json").read_text())
    (lab / "lab.json").write_text(json.dumps({**config, "version": 99}))
    assert_clear_refusal(init_compose(lab), "belongs to another cmglab version (lab version 99")
    # the services say the same, should one start on it
    assert_clear_refusal(cmglab("info", "--lab", str(lab)), "another cmglab version")


def test_a_damaged_lab_json_is_refused_with_the_way_out(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    assert init_compose(lab).returncode == 0
    text = (lab / "lab.json").read_text()
    (lab / "lab.json").write_text(text[: len(text) // 2])  # cut off mid-write
    assert_clear_refusal(init_compose(lab), "is damaged (not a lab config")
    config = json.loads(text)
    del config["tenants"]
    (lab / "lab.json").write_text(json.dumps(config))
    assert_clear_refusal(init_compose(lab), "is damaged (1 invalid fields; tenants: Field required)")


def test_a_lab_made_for_one_machine_is_not_taken_for_a_compose_lab(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    assert cmglab("init", "--lab", str(lab)).returncode == 0
    assert_clear_refusal(init_compose(lab), "a lab made for one machine")


def test_onboard_refuses_a_device_of_an_earlier_lab(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    assert init_compose(lab).returncode == 0
    home = tmp_path / "devices" / "device01"
    made = cmglab("device", "create", "--home", str(home), "--lab", str(lab))
    assert made.returncode == 0, made.stdout + made.stderr
    dev = Device.open(home)
    gone = "0b2d6e47-9c55-4a57-9d1f-6f1a4c0c9a11"  # the tenant of a lab that `down -v` removed
    dev.write_json(dev.join_path, {"TenantId": gone, "DeviceId": "x"})
    run = cmglab("device", "onboard", "--home", str(home), "--lab", str(lab))
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 2 and f"joined to tenant {gone}, which this lab does not have" in out, out
    # --new-in never picks it: the next device is a new one
    assert next_device_home(home.parent) == home.parent / "device02"


def test_onboard_wants_one_place_for_the_device(tmp_path: Path) -> None:
    run = cmglab("device", "onboard", "--lab", str(tmp_path))
    assert run.returncode == 2 and "exactly one of --home DIR and --new-in DIR" in run.stderr
