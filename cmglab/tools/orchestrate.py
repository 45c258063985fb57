"""`cmglab up/down/status/logs/health`: the embedded lab (lab contract §4) on one machine."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import SERVICES, LabProcesses

# the product log files each service writes, for `cmglab logs`
LOG_FILES = {
    "entra": [],
    "pki": [],
    "management-point": ["CCM_STS.log", "MP_RegistrationManager.log", "ClientAuth.log", "MP_Location.log",
                         "MP_Policy.log"],
    "cmg": ["CMGService.log"],
    "cmg-connection-point": ["SMS_CLOUD_PROXYCONNECTOR.log"],
    "console": [],
    "distribution-point": ["u_ex.log"],
}


def pid_file(lab: Lab, service: str) -> Path:
    return lab.dir / "run" / f"{service}.pid"


def running_pids(lab: Lab) -> dict[str, int]:
    pids = {}
    for service in SERVICES:
        path = pid_file(lab, service)
        if not path.exists():
            continue
        pid = int(path.read_text().strip())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink()
            continue
        pids[service] = pid
    return pids


def start_all(lab: Lab, *, detach: bool = False, workers: int = 1) -> LabProcesses:
    """Start every service that is not already running, then wait until all are healthy; `workers` processes
    for each service that can have several (Entra, MP, CRL host)."""
    procs = LabProcesses(lab, detach=detach, workers=workers)
    already = running_pids(lab)
    for service in SERVICES:
        if service not in already:
            sp = procs.start(service, wait=False)
            path = pid_file(lab, service)
            path.parent.mkdir(exist_ok=True)
            path.write_text(f"{sp.proc.pid}\n")
    procs.wait_healthy(SERVICES, timeout=60)
    procs.wait_channel()
    return procs


def stop_pids(lab: Lab, timeout: float = 10) -> list[str]:
    pids = running_pids(lab)
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service, pid in pids.items():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        pid_file(lab, service).unlink(missing_ok=True)
    return list(pids)


def health(lab: Lab, services: tuple[str, ...] = SERVICES, address: str | None = None) -> dict[str, str]:
    """Each service's health as its /_lab/health answers (or why it does not); with `address`, as the
    process listening there answers (replicas share their service's name)."""
    out = {}
    pinned = [f"{lab.host(s)}:{lab.port(s)}:{address}" for s in services] if address else []
    lab_id = lab.lab_id()
    with LabProcesses(lab).client(pinned) as c:
        for service in services:
            try:
                reply = c.get(f"{lab.url(service)}/_lab/health")
            except httpx.ConnectError as e:
                # a certificate this lab's CA did not sign: another lab (or program) holds the port
                out[service] = ("another lab answers (certificate not from this lab's CA)"
                                if "CERTIFICATE_VERIFY_FAILED" in str(e) else "down (nothing listens)")
                continue
            except httpx.HTTPError as e:
                out[service] = f"down ({type(e).__name__})"
                continue
            out[service] = health_state(reply, lab_id)
    return out


def health_state(reply: httpx.Response, lab_id: str) -> str:
    if reply.status_code != 200:
        return f"HTTP {reply.status_code}"
    try:
        answered = reply.json().get("lab_id")
    except (ValueError, AttributeError):
        answered = None
    if answered != lab_id:
        return f"another lab answers (its lab ID is {answered or 'missing'})"
    return "healthy"


def device_commands(lab: Lab, home: str = "./device01") -> list[list[str]]:
    """The commands that make a device, join it to Entra and install the client through the CMG
    (`cmglab device create` gives the device the lab's root CA and name mapping)."""
    c = lab.config
    user = c.primary_tenant.users[0]
    cmg = lab.url("cmg").removeprefix("https://")
    return [
        ["cmglab", "device", "create", "--lab", str(lab.dir), "--home", home],
        ["dsregcmd", "/join", "--home", home, "--username", user.upn, "--password", user.password],
        ["ccmsetup", "--home", home, f"CCMHOSTNAME={cmg}/CCM_Proxy_MutualAuth/{c.site.role_id}",
         f"SMSSITECODE={c.site.code}"],
    ]


def follow(paths: list[Path], poll: float = 0.5) -> Iterator[str]:
    """Lines appended to any of `paths` (like tail -F), prefixed with the file name."""
    offsets = {p: p.stat().st_size if p.exists() else 0 for p in paths}
    while True:
        for p in paths:
            if not p.exists():
                continue
            size = p.stat().st_size
            if size < offsets[p]:  # truncated or rotated
                offsets[p] = 0
            if size > offsets[p]:
                with p.open("rb") as f:
                    f.seek(offsets[p])
                    data = f.read(size - offsets[p])
                offsets[p] = size
                for line in data.decode("utf-8", "replace").splitlines():
                    yield f"{p.name}: {line}"
        time.sleep(poll)


def log_paths(lab: Lab, service: str | None) -> list[Path]:
    services = [service] if service else list(LOG_FILES)
    return [lab.dir / "logs" / s / name for s in services for name in LOG_FILES[s]]
