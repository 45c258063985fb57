"""Flow 1: Entra join (seed 002, managed stages A–H), status, leave, against the running Entra/DRS
over real TLS (and mutual TLS with the device certificate for the delete)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cmglab.agent.certstore import MY
from cmglab.agent.device import Device
from cmglab.agent.testing import messages, new_device, run
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses


@pytest.fixture(scope="module", autouse=True)
def services(lab_services: LabProcesses) -> None:
    lab_services.ensure("pki", "entra")


def join(lab: Lab, home: Path, user: int = 0, tenant: int = 0) -> tuple[Device, subprocess.CompletedProcess[str]]:
    u = lab.config.tenants[tenant].users[user]
    device = new_device(lab.dir, home)
    result = run("cmglab.agent.dsregcmd", "/join", "--home", str(home), "--username", u.upn,
                 "--password", u.password, "/debug")
    return device, result


def test_join_status_leave(lab: Lab, tmp_path: Path) -> None:
    device, result = join(lab, tmp_path / "dev")
    assert result.returncode == 0, result.stderr
    tenant = lab.config.primary_tenant
    log = "\n".join(messages(device.home / "Windows" / "Logs" / "dsreg.log"))
    for stage in ("Stage A: OpenID discovery", "Stage B/C: user realm", "Stage C: managed", "Stage D:",
                  "Stage E: DRS discovery", "Stage F: creating the device key", "Stage G: device registration",
                  "Stage H: device registration complete"):
        assert stage in log
    cert = device.stores.device_cert()
    assert cert is not None and cert.store == MY
    device_id = cert.cert().subject.rfc4514_string().removeprefix("CN=")
    status = run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert re.search(r"^\s+AzureAdJoined : YES$", status, re.M)
    assert re.search(rf"^\s+DeviceId : {device_id}$", status, re.M)
    assert re.search(rf"^\s+TenantId : {tenant.tenant_id}$", status, re.M)
    assert re.search(r"^\s+DomainJoined : NO$", status, re.M)
    for section in ("Device State", "Device Details", "Tenant Details", "User State"):
        assert f"| {section}" in status
    # joined twice: refused, nothing changes
    again = run("cmglab.agent.dsregcmd", "--join", "--home", str(device.home), "--username", tenant.users[0].upn,
                "--password", tenant.users[0].password)
    assert again.returncode == 1 and "already joined" in again.stderr
    leave = run("cmglab.agent.dsregcmd", "/leave", "--home", str(device.home))
    assert leave.returncode == 0 and device_id in leave.stdout
    assert device.stores.device_cert() is None and not device.join_path.exists() and not device.wam_path.exists()
    status = run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert re.search(r"^\s+AzureAdJoined : NO$", status, re.M)
    # the device object is gone: a join again gives a new device
    device2 = Device.open(device.home)
    rejoin = run("cmglab.agent.dsregcmd", "/join", "--home", str(device2.home), "--username", tenant.users[0].upn,
                 "--password", tenant.users[0].password)
    assert rejoin.returncode == 0, rejoin.stderr
    assert device_id not in rejoin.stdout


def test_wrong_password_leaves_the_device_unjoined(lab: Lab, tmp_path: Path) -> None:
    u = lab.config.primary_tenant.users[0]
    device = new_device(lab.dir, tmp_path / "dev")
    result = run("cmglab.agent.dsregcmd", "/join", "--home", str(device.home), "--username", u.upn,
                 "--password", "wrong")
    assert result.returncode == 1 and "50126" in result.stderr
    assert device.stores.device_cert() is None and not device.join_path.exists()
    ok = run("cmglab.agent.dsregcmd", "/join", "--home", str(device.home), "--username", u.upn, "--password",
             u.password)
    assert ok.returncode == 0, ok.stderr


def test_cleanupaccounts_removes_the_wam_account(lab: Lab, tmp_path: Path) -> None:
    device, result = join(lab, tmp_path / "dev")
    assert result.returncode == 0
    assert "WamDefaultSet : YES" in run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert run("cmglab.agent.dsregcmd", "/cleanupaccounts", "--home", str(device.home)).returncode == 0
    assert not device.wam_path.exists()
    assert "WamDefaultSet : NO" in run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout


def test_hybrid_join(lab: Lab, tmp_path: Path, admin_headers: dict[str, str]) -> None:
    """Seed 002, hybrid managed: the computer's userCertificate (stage C) is synchronised by Entra Connect
    (stage D: the lab admin API stands in for it), then the computer joins with JoinType 6 (F-H)."""
    import base64
    import logging

    from cmglab.agent.dsregcmd.join import Joiner
    from cmglab.agent.network import DeviceNetwork
    from cmglab.pki.builders import cert_der
    from tests.conftest import lab_client

    device = new_device(lab.dir, tmp_path / "dev", "--domain", "--name", "LAB01")
    info = device.info
    assert info.domain and info.machine_sid
    user_cert = Joiner(device, DeviceNetwork(device), logging.getLogger("test")).user_certificate()
    object_guid = user_cert.cert().subject.rfc4514_string().removeprefix("CN=")
    tenant = lab.config.primary_tenant
    # before the sync, the DRS does not know the computer
    early = run("cmglab.agent.dsregcmd", "/join", "--hybrid", "--tenant", "lab.test", "--home", str(device.home))
    assert early.returncode == 1 and not device.join_path.exists()
    with lab_client(lab) as c:
        r = c.post(f"{lab.url('entra')}/_lab/devices", headers=admin_headers, json={
            "tenant": tenant.tenant_id, "device_id": object_guid, "onprem_sid": info.machine_sid,
            "user_certificate": base64.b64encode(cert_der(user_cert.cert())).decode(), "display_name": info.name})
        assert r.status_code == 201, r.text
    result = run("cmglab.agent.dsregcmd", "/join", "--hybrid", "--tenant", "lab.test", "--home", str(device.home))
    assert result.returncode == 0, result.stderr
    status = run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert re.search(r"^\s+AzureAdJoined : YES$", status, re.M)
    assert re.search(r"^\s+DomainJoined : YES$", status, re.M)
    assert re.search(rf"^\s+DeviceId : {object_guid}$", status, re.M)
    assert device.stores.device_cert() is not None
