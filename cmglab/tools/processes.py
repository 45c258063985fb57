"""Start, watch and stop the lab's service processes (`cmglab serve <service>` each).

Used by `cmglab up` and by the test fixtures, so that the tests start the services exactly the way
a user does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cmglab.core.labconfig import Ports, save_config
from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import PORT_IN_USE_EXIT, adopt_inherited, handover, reserve_ports
from cmglab.runtime.workers import MULTI_WORKER
from cmglab.wire import httpclient

# start order: the CRL host first (clients may check CRLs), the MP before the connection point, the console
# (which only reads the others) last
SERVICES = ("pki", "entra", "management-point", "distribution-point", "cmg", "cmg-connection-point", "console")


def isolated_lab(path: Path) -> Lab:
    """A fresh lab on loopback ports reserved by this process, so that it can run beside another one (tests,
    benchmarks): its services must be started from this process (`LabProcesses`), which hands each one its
    sockets, so that no other program can take a port in between (cmglab/runtime/sockets.py)."""
    p = reserve_ports(10)
    ports = Ports(
        entra=p[0],
        cmg=p[1],
        cmg_connector=p[2],
        management_point=p[3],
        management_point_http=p[4],
        pki=p[5],
        cmg_connection_point=p[6],
        console=p[7],
        distribution_point=p[8],
        distribution_point_http=p[9],
    )
    lab, _ = Lab.init(path, ports=ports)
    for tenant in lab.config.tenants:  # a fleet or bench joins every device as one user: no device quota
        tenant.max_devices_per_user = None
    save_config(lab.config, Lab.config_path(path))
    return lab


def load_factor(cap: float = 4.0) -> float:
    """How much slower than idle the machine may be now: the 1-minute load average per CPU, from 1 to `cap`
    (deadlines for starting services and bench budgets are multiplied by it)."""
    try:
        per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 1.0
    return min(cap, max(1.0, per_cpu))


def listening_on(port: int) -> int:
    """How many sockets listen on PORT in this network namespace (one per worker: /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


class ServiceFailed(RuntimeError):
    pass


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    start_offset: int = 0  # the file is appended to across runs: where this process's output begins

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """This process's output only (an earlier run's lines would pass for its failure)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self.start_offset)
            return f.read().decode(errors="replace")


@dataclass
class LabProcesses:
    lab: Lab
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    detach: bool = False  # own session: the services outlive the terminal that started them
    prefix: list[str] = field(default_factory=list)  # e.g. taskset: where the benchmarks pin services
    # a second process of the same services (scale-out replicas; `env` says how it differs): names its output
    replica: str = ""
    workers: int = 1  # worker processes for the services that can have several (cmglab/runtime/workers.py)

    def __post_init__(self) -> None:
        adopt_inherited()  # ports reserved by whoever started us (a test running `cmglab up`) pass through

    def health_url(self, name: str) -> str:
        return f"{self.lab.url(name)}/_lab/health"

    def client(self, resolve: Iterable[str] = ()) -> httpx.Client:
        """A client with the lab's name mapping, overridden by `resolve` (HOST:PORT:ADDR) entries."""
        ctx = httpclient.ssl_context(ca_bundle=self.lab.pki.ca_bundle)
        return httpclient.client(ctx=ctx, resolve=[*self.lab.resolve(), *resolve], timeout=5)

    def start(self, name: str, *, wait: bool = True, timeout: float = 30) -> ServiceProcess:
        existing = self.procs.get(name)
        if existing and existing.alive():
            return existing
        out_dir = self.lab.dir / "logs" / "processes"
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path = out_dir / (f"{name}@{self.replica}.out" if self.replica else f"{name}.out")
        out = log_path.open("ab")
        start_offset = out.tell()
        several = {"CMGLAB_WORKERS": str(self.workers)} if name in MULTI_WORKER and self.workers > 1 else {}
        # the ports this process reserved: the service listens on fresh sockets made on them here
        try:
            with handover(self.env.get("CMGLAB_BIND") or self.lab.config.bind_address) as (handed_env, fds):
                proc = subprocess.Popen(
                    [*self.prefix, sys.executable, "-m", "cmglab", "serve", name, "--lab", str(self.lab.dir)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "CMGLAB_LAB_DIR": str(self.lab.dir), **self.env, **handed_env, **several},
                    start_new_session=self.detach,
                    pass_fds=fds,
                )
        finally:
            out.close()
        sp = ServiceProcess(name, proc, log_path, start_offset)
        self.procs[name] = sp
        if wait:
            self.wait_healthy([name], timeout=timeout)
        return sp

    def __enter__(self) -> LabProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def ensure(self, *names: str) -> None:
        """Start those services (in the lab's start order) unless they already run. When one fails to
        start (or the channel never comes up), the ones this call started are stopped before it raises:
        a failed start leaves nothing running behind."""
        wanted = [n for n in SERVICES if n in names]
        before = {n for n, sp in self.procs.items() if sp.alive()}
        try:
            for name in wanted:
                self.start(name, wait=False)
            self.wait_healthy(wanted)
            if "cmg-connection-point" in wanted:
                self.wait_channel()
        except BaseException:
            for name in reversed(wanted):
                if name not in before:
                    self.stop(name)
            raise

    def wait_channel(self, timeout: float = 30) -> None:
        """Healthy is not ready for the CMG: wait until a connection point has connected and published
        the site's configuration (until then the CMG answers 503)."""
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                try:
                    state = c.get(self.health_url("cmg")).json()
                    if state.get("connection_points") and state.get("site_config"):
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise ServiceFailed(f"no connection point connected to the CMG within {timeout}s")
                time.sleep(0.1)

    def wait_healthy(self, names: Iterable[str], timeout: float = 30) -> None:
        """Poll each service's /_lab/health (and, with several workers, their sockets) until all answer. The
        deadline scales: N workers build the service in turn, and a loaded machine starts everything slower
        (`load_factor`). A timeout says what was last seen."""
        base, factor = timeout, load_factor()
        timeout = base * max(1, self.workers) * factor
        started = time.monotonic()
        deadline = started + timeout
        with self.client() as c:
            for name in names:
                seen = "no answer yet"
                while True:
                    sp = self.procs.get(name)
                    if sp is not None and not sp.alive():
                        if sp.proc.returncode == PORT_IN_USE_EXIT:  # the service's own one line says it all
                            raise ServiceFailed(sp.output().strip().splitlines()[-1])
                        raise ServiceFailed(f"{name} exited with {sp.proc.returncode}:\n{sp.output()[-3000:]}")
                    try:
                        status = c.get(self.health_url(name)).status_code
                        seen = f"health answered HTTP {status}"
                        if status == 200 and self._all_workers_listen(name):
                            break
                        if status == 200:
                            listening = listening_on(self.lab.port(name))
                            seen = f"healthy, but {listening} of {self.workers} workers listen"
                    except httpx.HTTPError as e:
                        seen = f"health not answering ({type(e).__name__})"
                    if time.monotonic() > deadline:
                        tail = sp.output()[-3000:] if sp else ""
                        raise ServiceFailed(
                            f"{name} not healthy after {time.monotonic() - started:.0f}s (deadline {timeout:.0f}s: "
                            f"{base:g}s x {max(1, self.workers)} worker(s) x load factor {factor:.1f}, load "
                            f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs); last: {seen}:\n{tail}"
                        )
                    time.sleep(0.1)  # the poll's interval

    def _all_workers_listen(self, name: str) -> bool:
        """Healthy is one worker answering: with several, wait until each listens on its own socket."""
        if self.workers < 2 or name not in MULTI_WORKER:
            return True
        return listening_on(self.lab.port(name)) >= self.workers

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        sp = self.procs.pop(name, None)
        if sp is None or not sp.alive():
            return
        sp.proc.send_signal(sig)
        try:
            sp.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            sp.proc.kill()
            sp.proc.wait(5)

    def kill(self, name: str) -> None:
        """kill -9: no graceful shutdown, as a crash would."""
        self.stop(name, signal.SIGKILL)

    def stop_all(self, timeout: float = 10) -> None:
        """Signal every service at once, then wait for them together (`timeout` in all), killing what is left."""
        procs = [self.procs.pop(name) for name in reversed(list(self.procs))]
        for sp in procs:
            if sp.alive():
                sp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for sp in procs:
            try:
                sp.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                sp.proc.kill()
                sp.proc.wait(5)
