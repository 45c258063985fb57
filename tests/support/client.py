"""The client agent tests' helpers: the services a client install needs, a joined device, ccmsetup as a
subprocess, what a failed install must not leave behind."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from tests.support.agent import assert_lines, log_of, new_device, run
from tests.support.lab import lab_client

SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")

# The README troubleshooting row "CRL check is enabled": ccmsetup.log's lines of the failure (seed 001), and the
# line that names its remedy when the device holds no CRL at all
CRL_OFFLINE = (r"0x80092013", r"revocation server was offline")
CRL_CHECK_FAILED = r"Certificate revocation check failed: .*/nocrlcheck"


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


def mp_http(lab: Lab) -> str:
    """The MP's HTTP address, where an intranet client finds it (`/mp:`, `SMSMP=`)."""
    return f"http://{lab.config.hosts.management_point}:{lab.config.ports.management_point_http}"


def intranet_ccmsetup(lab: Lab, device: Device, *extra: str) -> subprocess.CompletedProcess[str]:
    """ccmsetup as on the intranet: from the MP over HTTP (`/mp:` and `SMSMP=`), site MEM, then `extra`."""
    return ccmsetup(device, f"/mp:{mp_http(lab)}", f"SMSMP={mp_http(lab)}", "SMSSITECODE=MEM", *extra)


def intranet_client(lab: Lab, home: Path, name: str, *, pki_cert: bool = False) -> Device:
    """The domain computer `name`, installed as an intranet client (`intranet_ccmsetup`); with `pki_cert`, it holds
    a PKI client certificate and ccmsetup uses it (`/usepkicert`: an HTTPS DP takes it)."""
    device = new_device(lab.dir, home, "--domain", "--name", name, *(("--pki-cert",) if pki_cert else ()))
    r = intranet_ccmsetup(lab, device, *(("/usepkicert",) if pki_cert else ()))
    assert r.returncode == 0, log_of(device, "ccmsetup.log")[-3000:]
    return device


def new_bulk_token(lab: Lab, minutes: int = 60) -> dict[str, str]:
    r = run("cmglab", "bulk-token", "new", "--lab", str(lab.dir), "--lifetime", str(minutes), "--json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, str] = json.loads(r.stdout)
    return doc


def device_command(lab: Lab, device: Device, verb: str, what: str) -> None:
    """`cmglab device break WHAT` (a troubleshooting row's cause) or `cmglab device repair WHAT` (its remedy)."""
    r = run("cmglab", "device", verb, what, "--home", str(device.home), "--lab", str(lab.dir))
    assert r.returncode == 0, r.stdout + r.stderr


def fails_clean(lab: Lab, device: Device, *lines: str, extra: tuple[str, ...] = ()) -> None:
    """ccmsetup (with `extra` on its command line) exits 6, ccmsetup.log has every one of `lines` (patterns), and
    nothing is half-written."""
    r = install(lab, device, *extra)
    assert r.returncode == 6, r.stdout + r.stderr
    assert_lines(device, "ccmsetup.log", *lines)
    assert_clean(device)


def installs(lab: Lab, device: Device, *extra: str) -> None:
    """ccmsetup (with `extra` on its command line) installs: the remedy worked."""
    r = install(lab, device, *extra)
    assert r.returncode == 0, r.stderr + log_of(device, "ccmsetup.log")[-3000:]


def rejoin(lab: Lab, device: Device) -> None:
    """`dsregcmd /leave`, then `dsregcmd /join` as the primary tenant's first user."""
    assert run("cmglab.agent.dsregcmd", "/leave", "--home", str(device.home)).returncode == 0
    u = lab.config.primary_tenant.users[0]
    join = run(
        "cmglab.agent.dsregcmd", "/join", "--home", str(device.home), "--username", u.upn, "--password", u.password
    )
    assert join.returncode == 0, join.stdout + join.stderr


def enrolled_then_revoked(lab: Lab, device: Device) -> None:
    """`cmglab device enrol` (a PKI client certificate for the device), then `cmglab pki revoke` of it: returns once
    the CMG refuses that certificate (it reloads its CRLs when the files change)."""
    enrol = run("cmglab", "device", "enrol", "--lab", str(lab.dir), "--home", str(device.home))
    assert enrol.returncode == 0, enrol.stderr
    label = enrol.stdout.strip()
    revoke = run("cmglab", "pki", "revoke", label, "--lab", str(lab.dir))
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    ident = (lab.dir / "pki" / "clients" / label / f"{label}.crt", lab.dir / "pki" / "clients" / label / f"{label}.key")
    mutual = f"{lab.url('cmg')}/CCM_Proxy_MutualAuth/{lab.config.site.role_id}/ccm_system/request"

    def refused() -> bool:
        try:
            with lab_client(lab, cert=ident, timeout=5) as c:
                c.get(mutual)
        except httpx.HTTPError:
            return True
        return False

    deadline = time.monotonic() + 30
    while not refused():
        assert time.monotonic() < deadline, "the CMG never refused the revoked certificate"
        time.sleep(0.2)
