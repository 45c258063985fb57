"""Fleet mode: a few devices onboarded in-process by the agent's own components (join, ccmsetup through
the CMG, registration, policy), keys from a pre-generated pool, and the summary they make."""

from __future__ import annotations

from pathlib import Path

from cmglab.agent.ccm.state import ClientState
from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from cmglab.tools.fleet import keypool, runner, summary
from cmglab.tools.fleet.steps import STEPS
from tests.support.lab import lab_client, lab_fixture

SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")


services = lab_fixture(*SERVICES, autouse=True)


def test_key_pool_hands_out_each_key_once(tmp_path: Path) -> None:
    path = tmp_path / "pool.pem"
    assert keypool.generate(path, 1, workers=2) == keypool.KEYS_PER_DEVICE
    assert path.stat().st_mode & 0o077 == 0
    pool = keypool.KeyPool.load(path)
    taken = [pool.take() for _ in range(keypool.KEYS_PER_DEVICE + 1)]
    numbers = {k.private_numbers().d for k in taken}
    assert len(numbers) == len(taken) and pool.fresh == 1  # the fifth came fresh, none twice


def test_fleet_onboards_every_device(lab: Lab, admin_headers: dict[str, str], tmp_path: Path) -> None:
    pool = tmp_path / "pool.pem"
    keypool.generate(pool, 3)
    run = runner.run(lab, 3, concurrency=3, root=tmp_path / "fleet", key_pool=pool)
    result = summary.summarise(run)
    assert result["succeeded"] == 3, result["failed_by_reason"]
    assert result["key_pool"] == {"pooled": 12, "fresh": 0}
    measured = {row["step"] for row in result["steps"]}
    assert set(STEPS) <= measured and "whole onboarding" in measured
    assert result["requests"]["cmg"] > 0 and result["requests"]["entra"] > 0
    # every device is a complete agent home: registered (Entra: approval 3) with its policy on disk
    sms_ids = set()
    for home in sorted((tmp_path / "fleet").iterdir()):
        device = Device.open(home)
        state = ClientState.load(device)
        assert state is not None and state.installed and state.approval == 3 and state.last_policy
        assert any(device.policy_dir.iterdir())
        sms_ids.add(state.sms_id)
    assert len(sms_ids) == 3
    with lab_client(lab) as c:
        clients = c.get(f"{lab.url('management-point')}/_lab/clients").json()["clients"]
    assert sms_ids <= {row["sms_id"] for row in clients}


def test_failures_are_grouped_by_reason(lab: Lab, tmp_path: Path) -> None:
    """A device that cannot reach the CMG fails with a reason; the fleet carries on."""
    plan = runner.plan(lab, tmp_path / "fleet")
    plan.ccmsetup = [a.replace(str(lab.port("cmg")), "1") if a.startswith("CCMHOSTNAME=") else a for a in plan.ccmsetup]
    from cmglab.tools.fleet.device import onboard

    results = [onboard(plan, name) for name in runner.device_names(2)]
    assert not any(r.ok for r in results)
    assert len({r.reason for r in results}) == 1 and results[0].reason
