"""`cmglab bench`: measurements, not timed tests. The server under test is pinned to CPU 0 and the
load generator to CPU 1 (when the machine has two), so the numbers say what one service core does."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cmglab.runtime import sockets
from cmglab.runtime.lab import Lab
from cmglab.tools.bench import held, hotspots, loadgen, onboarding, procinfo, report, scaling, scenarios, storm
from cmglab.tools.bench.pinned import LOAD_CPU, SERVER_CPU, CpuMeter, pids, pin_command, pin_self, running
from cmglab.wire import httpclient

COLUMNS = ["name", "requests", "errors", "rps", "p50_ms", "p95_ms", "p99_ms"]


@dataclass(frozen=True)
class Options:
    duration: float = 5.0  # seconds per measurement
    connections: int = 16  # concurrent connections of the load generator
    fleet_sizes: tuple[int, ...] = (100, 1000)
    fleet_concurrency: int = 16
    hold: int = 6000  # keep-alive connections held open at one CMG
    storm: int = 5000  # connections of each kind that never finish a handshake (section 6)
    profile: bool = True  # py-spy the hot endpoints (needs ptrace: root)


# a smoke run: every section, tiny sizes, no profiling (tests/test_bench_smoke.py)
QUICK = Options(duration=0.5, connections=4, fleet_sizes=(5,), fleet_concurrency=5, hold=200, storm=200,
                profile=False)


def wait_port(addr: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((addr, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{addr}:{port} did not open")


def transport_ceiling(lab: Lab, port: int, opts: Options) -> dict[str, Any]:
    """Section 1: a trivial endpoint on the same runtime: keep-alive and one new handshake per request."""
    with sockets.handover("127.0.0.1") as (handed_env, fds):  # the reserved port, no race
        proc = subprocess.Popen(pin_command([sys.executable, "-m", "cmglab.tools.bench.ceiling", "--lab",
                                             str(lab.dir), "--port", str(port)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **handed_env}, pass_fds=fds)
    try:
        wait_port("127.0.0.1", port)
        client = lab.pki.issue_client("bench-client")
        ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=(client.cert_path, client.key_path))
        target = loadgen.Target("127.0.0.1", port, lab.config.hosts.cmg, ctx)
        rows = []
        for name, keepalive in (("keep-alive", True), ("new TLS handshake per request", False)):
            meter = CpuMeter({"ceiling": proc.pid})
            result = asyncio.run(loadgen.run(name, target, lambda _i: loadgen.Request(path="/ping"),
                                             connections=opts.connections, duration=opts.duration,
                                             keepalive=keepalive))
            rows.append({**result.summary(), "server_cpu_ms": meter.per_request(result.requests).get("ceiling", 0)})
    finally:
        proc.terminate()
        proc.wait(10)
    return {"title": "1. Transport ceiling (uvicorn + TLS runtime, client certificate required, CRL on)",
            "note": f"{opts.connections} concurrent connections, {opts.duration:g} s each; server on CPU "
                    f"{SERVER_CPU}, load generator on CPU {LOAD_CPU}. server_cpu_ms: the server's CPU time per "
                    "request.",
            "columns": [*COLUMNS, "server_cpu_ms"], "rows": rows}


def measure(chosen: list[scenarios.Scenario], opts: Options, service_pids: dict[str, int]) -> list[dict[str, Any]]:
    """Each scenario for `duration`, with the CPU time every service process spent per request."""
    rows = []
    for s in chosen:
        def repeat(_i: int, request: loadgen.Request = s.request) -> loadgen.Request:
            return request

        # one request first: lazy set-up (a JWKS fetch, a first registration's row) is not what is measured,
        # and the MP's first registration of an SMSID is a check-then-insert that concurrent copies would race
        asyncio.run(loadgen.run(s.name, s.target, repeat, connections=1, duration=30, max_requests=1))
        meter = CpuMeter(service_pids)
        result = asyncio.run(loadgen.run(s.name, s.target, repeat, connections=opts.connections,
                                         duration=opts.duration))
        cpu = meter.per_request(result.requests)
        rows.append({**result.summary(), "server_cpu_ms": round(sum(cpu.values()), 2), "cpu_ms_per_service": cpu,
                     "cpu_split": ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())})
    return rows


def services_sections(service_pids: dict[str, int], lab: Lab, ceiling_rps: float, opts: Options) -> dict[str, Any]:
    """Sections 2 and 3: each service's hot endpoint alone against the ceiling, and the CMG path
    against the same request sent to the MP directly."""
    alone = measure([scenarios.entra_token(lab), *scenarios.mp_direct(lab)], opts, service_pids)
    for row in alone:
        row["ratio_to_ceiling"] = round(row["rps"] / ceiling_rps, 3) if ceiling_rps else 0
    chosen = scenarios.through_cmg(lab)
    via_cmg = measure(chosen, opts, service_pids)
    direct = {row["name"]: row for row in alone}
    for s, proxied in zip(chosen, via_cmg, strict=True):
        rps = direct[s.direct]["rps"]
        proxied["ratio_to_mp_direct"] = round(proxied["rps"] / rps, 3) if rps else 0
        proxied["mp_direct_cpu_ms"] = direct[s.direct]["server_cpu_ms"]
    cpu_note = "server_cpu_ms: CPU time of every service process per request (cpu_split: by process, ms)."
    return {
        "services": {"title": "2. Hot endpoints, each service alone (ratio to the keep-alive ceiling)",
                     "note": "Keep-alive connections; every service process pinned to the server CPU. " + cpu_note,
                     "columns": [*COLUMNS, "ratio_to_ceiling", "server_cpu_ms", "cpu_split"], "rows": alone},
        "cmg_path": {"title": "3. Through the CMG: client -> CMG -> channel -> connection point -> MP",
                     "note": "The same requests as section 2, ratio to the MP answering directly. "
                             "CMG, connection point and MP share the server CPU, so the ratio cannot pass "
                             "mp_direct_cpu_ms / server_cpu_ms. " + cpu_note,
                     "columns": [*COLUMNS, "ratio_to_mp_direct", "server_cpu_ms", "mp_direct_cpu_ms", "cpu_split"],
                     "rows": via_cmg},
    }


def run(lab: Lab, out_dir: Path, opts: Options, *, port: int, pool: Path) -> tuple[Path, Path]:
    """Every section in turn; `pool` is the fleet's key pool file (made or grown when too small)."""
    pin_self()
    nofile = procinfo.lift_nofile()  # before the services start: they inherit it (the CMG holds `hold` sockets)
    sections: dict[str, Any] = {"ceiling": transport_ceiling(lab, port, opts)}
    with running(lab) as procs:
        service_pids = pids(procs)
        sections.update(services_sections(service_pids, lab, sections["ceiling"]["rows"][0]["rps"], opts))
        profiles = hotspots.profile_section(lab, service_pids, opts.duration) if opts.profile else None
    sections["onboarding"] = onboarding.onboarding_section(lab, opts.fleet_sizes, opts.fleet_concurrency, pool)
    sections["connections"] = held.connections_section(lab, opts.hold, opts.duration, nofile)
    sections["profiles"] = hotspots.section(profiles, sections)
    sections["storm"] = storm.storm_section(lab, opts.storm, nofile)
    sections["workers"] = scaling.scaling_section(lab, opts.connections, opts.duration)
    return report.write(out_dir, sections, settings=asdict(opts))
