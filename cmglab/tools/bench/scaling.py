"""Section 8: one listener served by 1 and then 2 worker processes (`--workers`), Entra and the MP.

Each worker, its thread pool included, is pinned to a CPU of its own (worker k on CPU k): the question is
what one more worker on one more core adds. Unpinned, a single worker is not a one-core baseline: its
signatures and PBKDF2 run in its thread pool and release the GIL, so it already spreads over both CPUs of a
2-CPU machine (Entra ROPC: ~1.3 CPUs on 2026-11-26). The load generator is not pinned and shares the CPUs
with the workers, so 2x is out of reach by construction: each row says how much of the CPUs it took
(`loadgen_cpus`) and how busy the machine was with the workers and the generator together (`busy_cpus`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cmglab.runtime.lab import Lab
from cmglab.tools.bench import loadgen, procinfo, scenarios
from cmglab.tools.bench.guard import cleanup
from cmglab.tools.bench.pinned import CpuMeter, pin_process
from cmglab.tools.processes import LabProcesses

COLUMNS = [
    "name",
    "workers",
    "cpus",
    "requests",
    "errors",
    "rps",
    "p50_ms",
    "p99_ms",
    "server_cpu_ms",
    "loadgen_cpu_ms",
    "loadgen_cpus",
    "busy_cpus",
    "worker_cpus",
    "rps_per_cpu",
    "scaling",
    "scaling_per_cpu",
]


def worker_pids(procs: LabProcesses, names: tuple[str, ...]) -> dict[str, int]:
    """Every worker of the named services: the first process and its children."""
    found = {}
    for name in names:
        first = procs.procs[name].proc.pid
        found[name] = first
        children = Path(f"/proc/{first}/task/{first}/children").read_text().split()
        found.update({f"{name}#{i}": int(pid) for i, pid in enumerate(children, 1)})
    return found


def _cpus_of(pids: dict[str, int]) -> str:
    """The CPUs the workers may run on, read back after the row: what it measured."""
    return "+".join(str(cpu) for cpu in sorted(set().union(*(os.sched_getaffinity(pid) for pid in pids.values()))))


def _measure(s: scenarios.Scenario, pids: dict[str, int], connections: int, duration: float) -> dict[str, Any]:
    def repeat(_i: int, request: loadgen.Request = s.request) -> loadgen.Request:
        return request

    loadgen.run_sync(s.name, s.target, repeat, connections=connections, duration=2)  # warm every worker
    meter = CpuMeter(pids)
    generator = procinfo.cpu_seconds(os.getpid())  # this process is the load generator
    result = loadgen.run_sync(s.name, s.target, repeat, connections=connections, duration=duration)
    generator = procinfo.cpu_seconds(os.getpid()) - generator
    spent = meter.seconds()
    workers = sum(spent.values())
    per_worker: dict[int, float] = {}  # worker k of each service (on CPU k): an idle one shows here
    for worker, seconds in spent.items():
        index = int(worker.partition("#")[2] or 0)
        per_worker[index] = per_worker.get(index, 0.0) + seconds
    return {
        **result.summary(),
        "server_cpu_ms": round(sum(meter.per_request(result.requests).values()), 2),
        "loadgen_cpu_ms": round(1000 * generator / max(1, result.requests), 3),
        "loadgen_cpus": round(generator / result.seconds, 2) if result.seconds else 0.0,
        "busy_cpus": round((workers + generator) / result.seconds, 2) if result.seconds else 0.0,
        "worker_cpus": "+".join(f"{per_worker[k] / (result.seconds or 1):.2f}" for k in sorted(per_worker)),
        "rps_per_cpu": round(result.requests / workers, 1) if workers else 0.0,
    }


def _generator_share(rows: list[dict[str, Any]], workers: int, cpus: int) -> str:
    """What the generator took of the CPUs in the rows with the most workers, in words."""
    taken = [r["loadgen_cpus"] for r in rows if r["workers"] == workers]
    busy = [r["busy_cpus"] for r in rows if r["workers"] == workers]
    if not taken:
        return ""
    return (
        f"With {workers} workers the load generator took {min(taken):.2f}-{max(taken):.2f} CPUs "
        f"({100 * min(taken) / cpus:.0f}-{100 * max(taken) / cpus:.0f} % of the {cpus}), CPU the workers could not "
        f"have; workers and generator together kept {min(busy):.2f}-{max(busy):.2f} of the {cpus} CPUs busy "
        "(below that, the CPUs went to other load on the machine or the workers waited). "
    )


def add_factors(rows: list[dict[str, Any]]) -> None:
    """Each row's factors over the 1-worker row of the same request: `scaling`, its rps over that row's (what the
    goal measures), and `scaling_per_cpu`, its worker count times its requests per worker CPU-second over that
    row's: the factor had each worker a core to itself, the load generator's share (and other load) left out."""
    one = {r["name"]: r for r in rows if r["workers"] == 1}
    for r in rows:
        first = one.get(r["name"], {})
        r["scaling"] = round(r["rps"] / first["rps"], 2) if first.get("rps") else None
        per_cpu = first.get("rps_per_cpu")
        r["scaling_per_cpu"] = round(r["workers"] * r["rps_per_cpu"] / per_cpu, 2) if per_cpu else None


def scaling_section(
    lab: Lab, connections: int, duration: float, counts: tuple[int, ...] = (1, 2), rounds: int = 2
) -> dict[str, Any]:
    """ROUNDS rounds, each 1 then 2 workers (fresh processes), the best row of each kept: on a shared machine
    a slow moment then hits one round, not one worker count."""
    load_before = os.getloadavg()[0]
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    best: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        for _ in range(rounds):
            for workers in counts:
                procs = LabProcesses(lab, workers=workers)
                try:
                    procs.ensure("pki", "entra", "management-point")
                    pids = worker_pids(procs, ("entra", "management-point"))
                    for worker, pid in pids.items():  # "entra" is worker 0, "entra#1" worker 1...
                        pin_process(pid, int(worker.partition("#")[2] or 0) % (os.cpu_count() or 1))
                    for s in [scenarios.entra_token(lab), *scenarios.mp_direct(lab)[:2]]:
                        row = {**_measure(s, pids, connections, duration), "workers": workers}
                        row["cpus"] = _cpus_of(pids)
                        if row["rps"] > best.get((s.name, workers), {"rps": -1.0})["rps"]:
                            best[(s.name, workers)] = row
                finally:
                    with cleanup():  # the section's budget never interrupts stopping its services
                        procs.stop_all()
    finally:
        os.sched_setaffinity(0, pinned)
    cpus = os.cpu_count() or 1
    rows = sorted(best.values(), key=lambda r: (r["workers"], list(best).index((r["name"], r["workers"]))))
    add_factors(rows)
    return {
        "title": "8. Worker processes on one listener (Entra, MP): 1 and 2 workers",
        "note": f"cmglab serve --workers N: N processes on one port, each on a socket of its own. {connections} "
        f"keep-alive connections, {duration:g} s per row; worker k and its threads pinned to CPU k (one core "
        f"per worker), the load generator not pinned: it shares the machine's {cpus} CPUs with the "
        f"workers; the best of {rounds} interleaved rounds. "
        "scaling: rps over the same request with 1 worker (the goal's measure: >= 1.7 with 2). rps_per_cpu: "
        "requests per CPU-second of the workers; scaling_per_cpu: the workers' count times rps_per_cpu over the "
        "1-worker row's, i.e. the factor had each worker its core to itself (the generator on another machine, as "
        "real clients are): it leaves out the generator's share and other load, not what the workers cost each "
        "other or lose with fewer connections each (16 over 2 workers: ~8 each; a worker's CPU per request rises "
        "~10 % from 16 connections to 8, README 'Why location scales least'). "
        "server_cpu_ms: CPU of every worker process "
        "per request. loadgen_cpu_ms: the load generator's own CPU per request (the bench process: uvloop, "
        "one protocol per connection, loadgen.py); loadgen_cpus: its CPU-seconds per second; busy_cpus: the "
        "workers' and the generator's together; worker_cpus: each worker's CPU-seconds per second (worker 0+1: "
        f"one below the other's is a worker left waiting). {_generator_share(rows, max(counts), cpus)}"
        f"Load average (1 min) {load_before:.2f} before the section, {os.getloadavg()[0]:.2f} after.",
        "columns": COLUMNS,
        "rows": rows,
    }
