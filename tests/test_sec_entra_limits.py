"""Issue 15, Entra's limits: the device quota per user (DRS join beyond it is refused), device-code polling
faster than the interval answers `slow_down`, and smart lockout: after `threshold` distinct wrong passwords
the account answers AADSTS50053 for the lockout period, even to the right password; the same wrong password
again is not counted; the lock ends by itself (polled, no sleep) or at once with `cmglab entra unlock`. A lab
of its own (lab.json `smart_lockout` with a short period, a quota of 2), so that no other test's user is
locked or out of quota."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cmglab.core.labconfig import DRS_RESOURCE, save_config
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses, isolated_lab
from tests.support.entra_device import join_body, new_key
from tests.support.sec_attacks import client, wait_for

AAD_POWERSHELL = "1b730954-1685-4b74-9bfd-dac224a7b894"
PERIOD = 4
QUOTA = 2


# not lab_fixture: a lab of its own, lab.json changed before Entra starts (see the module's docstring)
@pytest.fixture(scope="module")
def entra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = isolated_lab(tmp_path_factory.mktemp("lockout") / "lab")
    lab.config.smart_lockout.duration_seconds = PERIOD
    lab.config.primary_tenant.max_devices_per_user = QUOTA
    save_config(lab.config, Lab.config_path(lab.dir))
    procs = LabProcesses(lab)
    procs.ensure("entra")
    yield lab
    procs.stop_all()


def ropc(lab: Lab, upn: str, password: str) -> dict[str, Any]:
    tenant = lab.config.primary_tenant.tenant_id
    with client(lab) as c:
        reply = c.post(
            f"{lab.url('entra')}/{tenant}/oauth2/token",
            data={
                "client_id": AAD_POWERSHELL,
                "grant_type": "password",
                "resource": DRS_RESOURCE,
                "username": upn,
                "password": password,
            },
        )
    body: dict[str, Any] = reply.json()
    body["status"] = reply.status_code
    return body


def code(reply: dict[str, Any]) -> int:
    return int(reply.get("error_codes", [0])[0]) if reply["status"] != 200 else 0


def test_device_quota_per_user(entra: Lab) -> None:
    user = entra.config.primary_tenant.users[0]
    token = ropc(entra, user.upn, user.password)["access_token"]
    drs = entra.url("entra", host="enterpriseregistration.windows.net")
    with client(entra) as c:

        def join(n: int) -> Any:
            return c.post(
                f"{drs}/EnrollmentServer/device/",
                params={"api-version": "2.0"},
                json=join_body(new_key(), new_key(), name=f"QUOTA-{n}"),
                headers={"Authorization": f"Bearer {token}"},
            )

        for n in range(QUOTA):
            assert join(n).status_code == 201
        over = join(QUOTA)
        devices = c.get(f"{entra.url('entra')}/_lab/devices").json()["devices"]
    assert over.status_code == 400 and over.json()["ErrorType"] == "AuthorizationError", over.text
    assert "maximum number of devices that can be joined to the workplace" in over.json()["Message"]
    assert sum(d.get("display_name", "").startswith("QUOTA-") for d in devices) == QUOTA  # nothing half-written


def test_device_code_polled_too_fast_is_slow_down(entra: Lab) -> None:
    login = entra.url("entra")
    with client(entra) as c:
        start = c.post(
            f"{login}/organizations/oauth2/v2.0/devicecode",
            data={"client_id": AAD_POWERSHELL, "scope": "https://ConfigMgrService/.default"},
        ).json()
        poll = {
            "client_id": AAD_POWERSHELL,
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": start["device_code"],
        }
        first = c.post(f"{login}/organizations/oauth2/v2.0/token", data=poll).json()
        second = c.post(f"{login}/organizations/oauth2/v2.0/token", data=poll).json()
    assert first["error"] == "authorization_pending"
    assert second["error"] == "slow_down", second


def test_ten_wrong_passwords_lock_the_account(entra: Lab) -> None:
    user = entra.config.primary_tenant.users[0]
    for _ in range(20):  # a client retrying one stale password is not locked out
        assert code(ropc(entra, user.upn, "stale-password")) == 50126
    for n in range(1, 9):
        assert code(ropc(entra, user.upn, f"guess-{n}")) == 50126  # 9 distinct so far
    locked = ropc(entra, user.upn, "guess-9")
    assert code(locked) == 50053 and locked["error"] == "invalid_grant"
    assert "AADSTS50053" in locked["error_description"]
    assert code(ropc(entra, user.upn, user.password)) == 50053  # the right password too, while locked
    started = time.monotonic()
    wait_for(lambda: code(ropc(entra, user.upn, user.password)) == 0, PERIOD + 10, "the lockout to end")
    assert time.monotonic() - started < PERIOD + 10


def test_unlock_ends_it_now(entra: Lab) -> None:
    user = (
        entra.config.primary_tenant.users[1]
        if len(entra.config.primary_tenant.users) > 1
        else entra.config.primary_tenant.users[0]
    )
    for n in range(10):
        last = ropc(entra, user.upn, f"wrong-{n}")
    assert code(last) == 50053
    out = subprocess.run(
        [sys.executable, "-m", "cmglab", "entra", "unlock", user.upn, "--lab", str(entra.dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "unlocked" in out
    assert code(ropc(entra, user.upn, user.password)) == 0
