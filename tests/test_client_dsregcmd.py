"""Flow 1: Entra join (seed 002, managed stages A–H), status, leave, against the running Entra/DRS
over real TLS (and mutual TLS with the device certificate for the delete)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from cmglab.agent.certstore import MY
from cmglab.agent.device import Device
from cmglab.core.ad import LabDirectory
from cmglab.core.labconfig import load_config
from cmglab.runtime.lab import Lab
from tests.support.agent import messages, new_device, run
from tests.support.lab import lab_client, lab_fixture

services = lab_fixture("pki", "entra", autouse=True)


def join(lab: Lab, home: Path, user: int = 0, tenant: int = 0) -> tuple[Device, subprocess.CompletedProcess[str]]:
    u = lab.config.tenants[tenant].users[user]
    device = new_device(lab.dir, home)
    result = run(
        "cmglab.agent.dsregcmd", "/join", "--home", str(home), "--username", u.upn, "--password", u.password, "/debug"
    )
    return device, result


def test_join_status_leave(lab: Lab, tmp_path: Path) -> None:
    device, result = join(lab, tmp_path / "dev")
    assert result.returncode == 0, result.stderr
    tenant = lab.config.primary_tenant
    log = "\n".join(messages(device.home / "Windows" / "Logs" / "dsreg.log"))
    for stage in (
        "Stage A: OpenID discovery",
        "Stage B/C: user realm",
        "Stage C: managed",
        "Stage D:",
        "Stage E: DRS discovery",
        "Stage F: creating the device key",
        "Stage G: device registration",
        "Stage H: device registration complete",
    ):
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
    again = run(
        "cmglab.agent.dsregcmd",
        "--join",
        "--home",
        str(device.home),
        "--username",
        tenant.users[0].upn,
        "--password",
        tenant.users[0].password,
    )
    assert again.returncode == 1 and "already joined" in again.stderr
    leave = run("cmglab.agent.dsregcmd", "/leave", "--home", str(device.home))
    assert leave.returncode == 0 and device_id in leave.stdout
    assert device.stores.device_cert() is None and not device.join_path.exists() and not device.wam_path.exists()
    status = run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert re.search(r"^\s+AzureAdJoined : NO$", status, re.M)
    # the device object is gone: a join again gives a new device
    device2 = Device.open(device.home)
    rejoin = run(
        "cmglab.agent.dsregcmd",
        "/join",
        "--home",
        str(device2.home),
        "--username",
        tenant.users[0].upn,
        "--password",
        tenant.users[0].password,
    )
    assert rejoin.returncode == 0, rejoin.stderr
    assert device_id not in rejoin.stdout


def test_wrong_password_leaves_the_device_unjoined(lab: Lab, tmp_path: Path) -> None:
    u = lab.config.primary_tenant.users[0]
    device = new_device(lab.dir, tmp_path / "dev")
    result = run(
        "cmglab.agent.dsregcmd", "/join", "--home", str(device.home), "--username", u.upn, "--password", "wrong"
    )
    assert result.returncode == 1 and "50126" in result.stderr
    assert device.stores.device_cert() is None and not device.join_path.exists()
    ok = run(
        "cmglab.agent.dsregcmd", "/join", "--home", str(device.home), "--username", u.upn, "--password", u.password
    )
    assert ok.returncode == 0, ok.stderr


def test_cleanupaccounts_removes_the_wam_account(lab: Lab, tmp_path: Path) -> None:
    device, result = join(lab, tmp_path / "dev")
    assert result.returncode == 0
    assert "WamDefaultSet : YES" in run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert run("cmglab.agent.dsregcmd", "/cleanupaccounts", "--home", str(device.home)).returncode == 0
    assert not device.wam_path.exists()
    assert "WamDefaultSet : NO" in run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout


def test_hybrid_join(lab: Lab, tmp_path: Path) -> None:
    """Seed 002, hybrid managed, as a newcomer runs it: a new computer joins the lab's AD, finds its tenant in
    the service connection point, writes its certificate to its computer object; pending until Entra Connect
    syncs it (`cmglab entra sync`), then joined (JoinType 6)."""
    device = new_device(lab.dir, tmp_path / "dev", "--domain", "--name", "HYB-PC07")
    info = device.info
    assert info.domain and info.machine_sid and info.ad_directory
    directory = LabDirectory(Path(info.ad_directory))
    computer = directory.computer("HYB-PC07$")
    assert computer is not None and computer["objectSid"] == info.machine_sid
    assert any(a.name == "HYB-PC07$" for a in load_config(lab.dir / "lab.json").active_directory.accounts)
    # before the sync: the DRS does not know the computer; the attempt is pending
    early = run("cmglab.agent.dsregcmd", "/join", "/hybrid", "--home", str(device.home))  # the README's line
    assert early.returncode == 1 and "0x801c03f2" in early.stderr and "cmglab entra sync" in early.stderr
    assert "then `dsregcmd /join /hybrid` again" in early.stderr  # what the help and the README show
    assert not device.join_path.exists()
    status = run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert re.search(r"^\s+AzureAdJoined : NO$", status, re.M)
    assert re.search(r"^\s+Client ErrorCode : 0x801c03f2$", status, re.M)
    assert re.search(r"^\s+Server ErrorCode : DirectoryError$", status, re.M)
    assert re.search(
        rf"Server Message : .*The device object by the given id \({computer['objectGUID']}\) is not "
        r"found",
        status,
    )
    written = directory.computer("HYB-PC07$")
    assert written is not None and len(written["userCertificate"]) == 1
    log = "\n".join(messages(device.home / "Windows" / "Logs" / "dsreg.log"))
    assert "Stage A: service connection point" in log and "azureADId" in log and "Stage C: the self-signed" in log
    # Entra Connect
    sync = run("cmglab", "entra", "sync", "--lab", str(lab.dir), "--json")
    assert sync.returncode == 0, sync.stderr
    assert computer["objectGUID"] in json.loads(sync.stdout)["added"]
    result = run("cmglab.agent.dsregcmd", "/join", "--hybrid", "--home", str(device.home))
    assert result.returncode == 0, result.stderr
    status = run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert re.search(r"^\s+AzureAdJoined : YES$", status, re.M)
    assert re.search(r"^\s+DomainJoined : YES$", status, re.M)
    assert re.search(rf"^\s+DeviceId : {computer['objectGUID']}$", status, re.M)
    assert "Diagnostic Data" not in status and device.stores.device_cert() is not None
    # a user signs in on the hybrid device: a PRT
    alice = lab.config.primary_tenant.users[0]
    signin = run(
        "cmglab.agent.dsregcmd",
        "/signin",
        "--home",
        str(device.home),
        "--username",
        alice.upn,
        "--password",
        alice.password,
    )
    assert signin.returncode == 0, signin.stderr
    assert re.search(
        r"^\s+AzureAdPrt : YES$", run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout, re.M
    )


def test_entra_connect_cycle_syncs_on_its_schedule(lab: Lab, tmp_path: Path) -> None:
    """The scheduled cycle (CMGLAB_ENTRA_SYNC_INTERVAL) takes a computer's new userCertificate into Entra
    without `cmglab entra sync` (here on a short interval, against the lab's Entra store)."""
    import asyncio
    import time

    from cmglab.core.ad import ad_path
    from cmglab.services.entra.connect_sync import ConnectSync
    from cmglab.services.entra.nonces import NonceKey
    from cmglab.services.entra.store import Store, device_by_id

    device = new_device(lab.dir, tmp_path / "dev", "--domain", "--name", "HYB-SCHED1")
    assert run("cmglab.agent.dsregcmd", "/join", "--hybrid", "--home", str(device.home)).returncode == 1
    computer = LabDirectory(Path(str(device.info.ad_directory))).computer("HYB-SCHED1$")
    assert computer is not None and computer["userCertificate"]
    store = Store(lab.database_url("entra"), lab.config, NonceKey.of_lab(lab))

    def synced() -> bool:
        with store.session() as s:
            return device_by_id(s, computer["objectGUID"]) is not None

    async def cycle() -> bool:
        task = asyncio.create_task(ConnectSync(store, ad_path(lab.dir)).every(0.2))
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                if synced():
                    return True
                await asyncio.sleep(0.1)
            return False
        finally:
            task.cancel()

    assert not synced()
    assert asyncio.run(cycle())
    result = run("cmglab.agent.dsregcmd", "/join", "--hybrid", "--home", str(device.home))
    assert result.returncode == 0, result.stderr


def test_federated_hybrid_join_with_on_premises_claims(lab: Lab, tmp_path: Path) -> None:
    """Seed 002, federated hybrid: the computer signs in to the federation service with its machine account
    (WS-Trust windowstransport, NTLM), Entra turns its on-premises claims into a DRS token (account_type DJ),
    and the join (JoinType 6) needs no Entra Connect sync."""
    device = new_device(lab.dir, tmp_path / "dev", "--domain", "--name", "FEDHYB-PC1")
    computer = LabDirectory(Path(str(device.info.ad_directory))).computer("FEDHYB-PC1$")
    assert computer is not None
    result = run("cmglab.agent.dsregcmd", "/join", "--hybrid", "--tenant", "fed.lab.test", "--home", str(device.home))
    assert result.returncode == 0, result.stderr
    log = "\n".join(messages(device.home / "Windows" / "Logs" / "dsreg.log"))
    assert "signs in at the federation service (windowstransport" in log
    assert f"account_type DJ, on_prem_id {computer['objectGUID']}" in log
    status = run("cmglab.agent.dsregcmd", "/status", "--home", str(device.home)).stdout
    assert re.search(rf"^\s+DeviceId : {computer['objectGUID']}$", status, re.M)
    assert re.search(r"^\s+DomainJoined : YES$", status, re.M) and re.search(r"^\s+AzureAdJoined : YES$", status, re.M)
    with lab_client(lab) as c:
        found = {d["device_id"]: d for d in c.get(f"{lab.url('entra')}/_lab/devices").json()["devices"]}
    assert found[computer["objectGUID"]]["onprem_sid"] == device.info.machine_sid
    assert found[computer["objectGUID"]]["join_type"] == 6 and found[computer["objectGUID"]]["trust_type"] == "ServerAd"
