"""`cmglab up/down/status/logs/health`: the embedded lab (docs/protocol-notes.md, Lab §4) on one machine."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import SERVICES, LabProcesses

# the product log files each service writes, for `cmglab logs`
LOG_FILES = {
    "entra": [],
    "pki": [],
    "management-point": [
        "CCM_STS.log",
        "MP_RegistrationManager.log",
        "ClientAuth.log",
        "MP_Location.log",
        "MP_Policy.log",
    ],
    "cmg": ["CMGService.log"],
    "cmg-connection-point": ["SMS_CLOUD_PROXYCONNECTOR.log"],
    "console": [],
    "distribution-point": ["u_ex.log"],
}


def pid_file(lab: Lab, service: str) -> Path:
    return lab.dir / "run" / f"{service}.pid"


def foreground_pid_file(lab: Lab) -> Path:
    """Where a foreground `cmglab up` says it runs, so that `cmglab down` stops it (its supervisor would restart
    services stopped under it)."""
    return lab.dir / "run" / "up.pid"


def stop_foreground(lab: Lab, timeout: float = 10) -> int | None:
    """Ask a foreground `cmglab up` of this lab to stop (as Ctrl-C does) and wait until it has: its pid, or None
    when none runs."""
    path = foreground_pid_file(lab)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):  # none, a stale file, or not ours to signal
        path.unlink(missing_ok=True)
        return None
    deadline = time.monotonic() + timeout
    while path.exists() and not _gone(pid) and time.monotonic() < deadline:  # it removes the file when done
        time.sleep(0.05)
    return pid


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


def write_pid(lab: Lab, service: str, pid: int) -> None:
    path = pid_file(lab, service)
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"{pid}\n")


def start_all(lab: Lab, *, detach: bool = False, workers: int = 1, pin_workers: bool = True) -> LabProcesses:
    """Start every service that is not already running, then wait until all are healthy; `workers` processes
    for each service that can have several (Entra, MP, CRL host), each on a CPU of its own unless not
    `pin_workers`. When one fails (or Ctrl-C comes first), the services this call started are stopped before it
    raises."""
    env = {} if pin_workers else {"CMGLAB_PIN_WORKERS": "0"}
    procs = LabProcesses(lab, env=env, detach=detach, workers=workers)
    already = running_pids(lab)
    try:
        for service in SERVICES:
            if service not in already:
                write_pid(lab, service, procs.start(service, wait=False).proc.pid)
        procs.wait_healthy(SERVICES, timeout=60)
        procs.wait_channel()
    except BaseException:
        started = list(procs.procs)
        procs.stop_all(timeout=STOP_TIMEOUT)
        for service in started:
            pid_file(lab, service).unlink(missing_ok=True)
        raise
    return procs


# Ctrl-C stops a lab within 2 s: what has not stopped by then is killed
STOP_TIMEOUT = 1.0
# a service that dies is restarted, as a service manager would, at most this often
RESTART_LIMIT, RESTART_WINDOW = 3, 60.0


@dataclass
class Supervisor:
    """Watches a foreground lab's services: reports one that dies at once (and reaps it: no zombie),
    restarts it up to RESTART_LIMIT times within RESTART_WINDOW seconds, says when it answers again."""

    lab: Lab
    procs: LabProcesses
    restarts: dict[str, list[float]] = field(default_factory=dict)
    coming_back: set[str] = field(default_factory=set)
    asked: float = 0.0  # when the restarted services' health was last asked (once a second)

    def check(self) -> list[str]:
        events = []
        now = time.monotonic()
        for name, sp in list(self.procs.procs.items()):
            code = sp.proc.poll()  # reaps a dead child
            if code is None:
                continue
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            recent = [t for t in self.restarts.get(name, []) if now - t < RESTART_WINDOW]
            if len(recent) >= RESTART_LIMIT:
                del self.procs.procs[name]
                pid_file(self.lab, name).unlink(missing_ok=True)
                self.coming_back.discard(name)
                events.append(
                    f"{name} {how}; not restarted: {RESTART_LIMIT} restarts within {RESTART_WINDOW:.0f} s "
                    f"(its output: {sp.log_path})"
                )
                continue
            self.restarts[name] = [*recent, now]
            new = self.procs.start(name, wait=False)
            write_pid(self.lab, name, new.proc.pid)
            self.coming_back.add(name)
            events.append(
                f"{name} {how}; restarted as pid {new.proc.pid} "
                f"(restart {len(recent) + 1} of {RESTART_LIMIT} within {RESTART_WINDOW:.0f} s)"
            )
        if self.coming_back and now - self.asked >= 1.0:
            self.asked = now
            states = health(self.lab, tuple(self.coming_back))
            for name, state in states.items():
                if state == "healthy":
                    self.coming_back.discard(name)
                    events.append(f"{name} is healthy again")
        return events


def _gone(pid: int) -> bool:
    """Whether the process has exited; a child of ours that has is reaped here (a zombie still answers kill 0)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # not our child
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_pids(lab: Lab, timeout: float = 10) -> list[str]:
    pids = running_pids(lab)
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service, pid in pids.items():
        while not _gone(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
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
                out[service] = (
                    "another lab answers (certificate not from this lab's CA)"
                    if "CERTIFICATE_VERIFY_FAILED" in str(e)
                    else "down (nothing listens)"
                )
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
        [
            "ccmsetup",
            "--home",
            home,
            f"CCMHOSTNAME={cmg}/CCM_Proxy_MutualAuth/{c.site.role_id}",
            f"SMSSITECODE={c.site.code}",
        ],
    ]


def check_commands(lab: Lab, home: str = "./device01") -> list[list[str]]:
    """What shows the device worked: its Entra join state and one client cycle (a one-line summary)."""
    return [["dsregcmd", "/status", "--home", home], ["ccmexec", "--home", home]]


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
