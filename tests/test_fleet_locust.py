"""The fleet driven by Locust (`cmglab fleet locust`): each Locust user is one device that onboards through the
CMG, then runs policy cycles and token renewals. Run headless in subprocesses (Locust monkey-patches whoever
imports it), standalone with a key pool, then distributed: a master and one worker on loopback, the worker
given only what `cmglab fleet export` writes and the master no lab at all. Checked on Locust's own statistics
(every step and flow, no failure) and at the MP (every device registered)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from cmglab.agent.ccm.state import ClientState
from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import free_port_now
from cmglab.tools.fleet import keypool
from cmglab.tools.fleet.cli import NEEDED
from cmglab.tools.fleet.steps import STEPS
from tests.support.lab import lab_client, lab_fixture

FLOWS = ("onboarding", "policy cycle", "token renewal")
DEVICES = 3
ATTEMPTS = 3  # master ports tried: one free when picked may be taken before the master binds it
# a client cycle every ~second: each device renews its token (first cycle) and polls policy several times
RUN = ("--headless", "-u", str(DEVICES), "-r", str(DEVICES), "--run-time", "15s", "--cycle-wait", "1", "--only-summary")


services = lab_fixture(*NEEDED, autouse=True)


def cmglab(*args: str) -> list[str]:
    return [sys.executable, "-m", "cmglab", *args]


def locust(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmglab("fleet", "locust", *args), capture_output=True, text=True, timeout=120)


def check_fleet(lab: Lab, csv_prefix: Path, homes: Path) -> None:
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(f) if row["Name"] != "Aggregated"}
    assert {name for _, name in rows} >= {*STEPS, *FLOWS}
    assert {kind for kind, _ in rows} == {"entra", "cmg", "flow"}  # a device reaches the MP only through the CMG
    assert all(row["Failure Count"] == "0" for row in rows.values())
    assert rows["flow", "onboarding"]["Request Count"] == str(DEVICES)
    sms_ids = set()
    for home in homes.iterdir():
        state = ClientState.load(Device.open(home))
        assert state is not None and state.installed and state.approval == 3 and state.last_policy
        sms_ids.add(state.sms_id)
    assert len(sms_ids) == DEVICES
    with lab_client(lab) as c:
        clients = c.get(f"{lab.url('management-point')}/_lab/clients").json()["clients"]
    assert sms_ids <= {row["sms_id"] for row in clients}


def test_locust_drives_the_fleet(lab: Lab, tmp_path: Path) -> None:
    pool = tmp_path / "pool.pem"
    keypool.generate(pool, DEVICES)
    run = locust(
        *RUN,
        "--lab",
        str(lab.dir),
        "--key-pool",
        str(pool),
        "--fleet-dir",
        str(tmp_path / "devices"),
        "--csv",
        str(tmp_path / "locust"),
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"key pool: {DEVICES * keypool.KEYS_PER_DEVICE} keys" in run.stderr and "ran dry" not in run.stderr
    check_fleet(lab, tmp_path / "locust", tmp_path / "devices")


def master_and_worker(exported: Path, tmp_path: Path, port: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """A Locust master and one worker on PORT (locust binds it itself: it cannot be handed a socket): the
    master's run and the worker's exit code."""
    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as log:
        worker = subprocess.Popen(
            cmglab(
                "fleet",
                "locust",
                "--worker",
                "--master-host",
                "127.0.0.1",
                "--master-port",
                port,
                "--lab",
                str(exported),
                "--fleet-dir",
                str(tmp_path / "devices"),
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # the master's --lab names nothing: paths are each machine's own, never forwarded to workers
            master = locust(
                *RUN,
                "--master",
                "--master-bind-host",
                "127.0.0.1",
                "--master-bind-port",
                port,
                "--expect-workers",
                "1",
                "--expect-workers-max-wait",
                "60",
                "--lab",
                str(tmp_path / "not-on-the-master"),
                "--csv",
                str(tmp_path / "locust"),
            )
            if master.returncode == 0:
                worker.wait(timeout=60)  # the master tells its workers to quit at the end of the run
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return master, worker.returncode


def test_distributed_master_and_worker(lab: Lab, tmp_path: Path) -> None:
    exported = tmp_path / "worker-lab"
    subprocess.run(
        cmglab("fleet", "export", "--lab", str(lab.dir), "--address", lab.config.bind_address, "--out", str(exported)),
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()) == [
        "hosts",
        "lab.json",
        "pki/ca-bundle.pem",
    ]
    for _ in range(ATTEMPTS):
        master, worker = master_and_worker(exported, tmp_path, str(free_port_now()))
        if master.returncode and "Address already in use" in master.stderr:
            continue  # free when picked, taken before the master bound it: another port
        break
    assert master.returncode == 0, master.stderr[-4000:]
    assert worker == 0, (tmp_path / "worker.log").read_text()[-4000:]
    check_fleet(lab, tmp_path / "locust", tmp_path / "devices")
