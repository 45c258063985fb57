"""The client agent tests' helpers: the services a client install needs, a joined device, ccmsetup as a
subprocess, what a failed install must not leave behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from tests.support.agent import new_device, run

SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")


def ccmhostname(lab: Lab) -> str:
    return f"{lab.url('cmg').removeprefix('https://')}/CCM_Proxy_MutualAuth/{lab.config.site.role_id}"


def joined_device(lab: Lab, home: Path, *, user: int = 0, tenant: int = 0) -> Device:
    device = new_device(lab.dir, home)
    u = lab.config.tenants[tenant].users[user]
    r = run("cmglab.agent.dsregcmd", "/join", "--home", str(home), "--username", u.upn, "--password", u.password)
    assert r.returncode == 0, r.stderr
    return device


def ccmsetup(device: Device, *args: str) -> subprocess.CompletedProcess[str]:
    return run("cmglab.agent.ccmsetup", "--home", str(device.home), *args)


def assert_clean(device: Device) -> None:
    assert not device.client_path.exists(), "client state left behind"
    assert not device.token_cache_path.exists(), "a CCM token left behind"
    assert not device.client_token_path.exists()
    assert not (device.ccm_dir / "client.msi").exists()


def install(lab: Lab, device: Device, *extra: str) -> subprocess.CompletedProcess[str]:
    return ccmsetup(device, f"CCMHOSTNAME={ccmhostname(lab)}", "SMSSITECODE=MEM", *extra)


def new_bulk_token(lab: Lab, minutes: int = 60) -> dict[str, str]:
    r = run("cmglab", "bulk-token", "new", "--lab", str(lab.dir), "--lifetime", str(minutes), "--json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, str] = json.loads(r.stdout)
    return doc
