"""Where the benchmarks run things: the services under test pinned to CPU 0, the load generator (and fleet
devices) to CPU 1 when the machine has two, so that the numbers say what one service core does; and how
much CPU each service process spent on a measurement."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cmglab.runtime.lab import Lab
from cmglab.tools.bench import procinfo
from cmglab.tools.bench.guard import cleanup
from cmglab.tools.processes import LabProcesses

SERVER_CPU, LOAD_CPU = 0, 1
# what a device needs (the console only watches): every section's services come from here
SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")


def two_cpus() -> bool:
    return (os.cpu_count() or 1) > 1


def pin_command(argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(SERVER_CPU), *argv] if two_cpus() else argv


def pin_self() -> None:
    if two_cpus():
        os.sched_setaffinity(0, {LOAD_CPU})


def pin_process(pid: int, cpu: int) -> None:
    """Every thread of `pid` on `cpu`: sched_setaffinity on a PID moves only its main thread, and a thread
    inherits the mask of the thread that starts it, so the pool threads made later stay on it too."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), {cpu})


@contextmanager
def running(lab: Lab, *names: str, env: dict[str, str] | None = None) -> Iterator[LabProcesses]:
    """Fresh service processes (the lab's start order, pinned to the server CPU; `env`: CMGLAB_* settings they
    run with), stopped afterwards."""
    procs = LabProcesses(lab, env=dict(env or {}), prefix=pin_command([]))
    try:
        procs.ensure(*(names or SERVICES))
        yield procs
    finally:
        with cleanup():  # the section's budget never interrupts stopping its services
            procs.stop_all()


def pids(procs: LabProcesses) -> dict[str, int]:
    return {name: sp.proc.pid for name, sp in procs.procs.items()}


class CpuMeter:
    """CPU seconds each service process spends between start() and per_request(), and how long its threads waited
    for a CPU meanwhile (waited())."""

    def __init__(self, service_pids: dict[str, int]) -> None:
        self.pids = service_pids
        self.start()

    def start(self) -> None:
        self.begin = {name: procinfo.cpu_seconds(pid) for name, pid in self.pids.items()}
        self.waits = {name: procinfo.run_queue_wait_seconds(pid) for name, pid in self.pids.items()}

    def waited(self) -> dict[str, float]:
        """Seconds each process's threads were runnable but not running since start(): a row whose services
        waited most of its duration was starved of the server CPU by the host's other load, not slow."""
        return {
            name: max(0.0, procinfo.run_queue_wait_seconds(pid) - self.waits[name]) for name, pid in self.pids.items()
        }

    def seconds(self) -> dict[str, float]:
        return {name: procinfo.cpu_seconds(pid) - self.begin[name] for name, pid in self.pids.items()}

    def per_request(self, requests: int, *, floor_ms: float = 0.05) -> dict[str, float]:
        """Milliseconds of CPU per request of each process that did measurable work."""
        spent = {name: 1000 * s / max(1, requests) for name, s in self.seconds().items()}
        return {name: round(ms, 2) for name, ms in spent.items() if ms >= floor_ms}
