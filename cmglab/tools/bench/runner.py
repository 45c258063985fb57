"""`cmglab bench`: measurements, not timed tests. The server under test is pinned to CPU 0 and the
load generator to CPU 1 (when the machine has two), so the numbers say what one service core does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cmglab.runtime import sockets
from cmglab.runtime.lab import Lab
from cmglab.tools.bench import (
    entra_scenarios,
    floor,
    held,
    hotspots,
    loadgen,
    onboarding,
    procinfo,
    report,
    scaling,
    scenarios,
    storm,
)
from cmglab.tools.bench.guard import Guard, cleanup
from cmglab.tools.bench.pinned import LOAD_CPU, SERVER_CPU, CpuMeter, pids, pin_command, pin_self, running
from cmglab.tools.bench.sections import TITLES
from cmglab.wire import httpclient

COLUMNS = ["name", "requests", "errors", "rps", "p50_ms", "p95_ms", "p99_ms"]
FLOOR_NOTE = (
    "floor_ms: the keep-alive transport (section 1) + the cryptography the protocol requires for the request "
    "(section 1's tables: each primitive's fastest timing in this run); floor_rps = 1000 / floor_ms (one "
    "core); ratio_to_floor = rps / floor_rps (goal >= 0.7); cpu_ratio_to_floor = floor_ms / server_cpu_ms "
    "(the same on an idle machine, steadier on a shared one)."
)


@dataclass(frozen=True)
class Options:
    duration: float = 5.0  # seconds per measurement
    connections: int = 16  # concurrent connections of the load generator
    fleet_sizes: tuple[int, ...] = (100, 1000)
    fleet_concurrency: int = 16
    hold: int = 6000  # keep-alive connections held open at one CMG
    storm: int = 5000  # connections of each kind that never finish a handshake (section 7)
    scaling_rounds: int = 2  # interleaved 1- and 2-worker rounds in section 8, the best of each kept
    profile: bool = True  # py-spy the hot endpoints (needs ptrace: root)


# a smoke run: every section, tiny sizes, no profiling (tests/test_bench_smoke.py)
QUICK = Options(
    duration=0.5,
    connections=4,
    fleet_sizes=(5,),
    fleet_concurrency=5,
    hold=200,
    storm=200,
    scaling_rounds=1,
    profile=False,
)


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
        proc = subprocess.Popen(
            pin_command(
                [sys.executable, "-m", "cmglab.tools.bench.ceiling", "--lab", str(lab.dir), "--port", str(port)]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **handed_env},
            pass_fds=fds,
        )
    try:
        wait_port("127.0.0.1", port)
        client = lab.pki.issue_client("bench-client")
        ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=(client.cert_path, client.key_path))
        target = loadgen.Target("127.0.0.1", port, lab.config.hosts.cmg, ctx)
        rows = []
        for name, keepalive in (("keep-alive", True), ("new TLS handshake per request", False)):
            meter = CpuMeter({"ceiling": proc.pid})
            result = loadgen.run_sync(
                name,
                target,
                lambda _i: loadgen.Request(path="/ping"),
                connections=opts.connections,
                duration=opts.duration,
                keepalive=keepalive,
            )
            rows.append({**result.summary(), "server_cpu_ms": meter.per_request(result.requests).get("ceiling", 0)})
    finally:
        with cleanup():  # the section's budget never interrupts stopping the ceiling's server
            proc.terminate()
            proc.wait(10)
    return {
        "title": "1. Transport ceiling (uvicorn + TLS runtime, client certificate required, CRL on)",
        "note": f"{opts.connections} concurrent connections, {opts.duration:g} s each; server on CPU "
        f"{SERVER_CPU}, load generator on CPU {LOAD_CPU}. server_cpu_ms: the server's CPU time per "
        "request.",
        "columns": [*COLUMNS, "server_cpu_ms"],
        "rows": rows,
    }


def measure(chosen: list[scenarios.Scenario], opts: Options, service_pids: dict[str, int]) -> list[dict[str, Any]]:
    """Each scenario for `duration`, with the CPU time every service process spent per request."""
    rows = []
    for s in chosen:
        repeat = s.make
        # one request first: lazy set-up (a JWKS fetch, a first registration's row) is not what is measured,
        # and the MP's first registration of an SMSID is a check-then-insert that concurrent copies would race
        loadgen.run_sync(s.name, s.target, repeat, connections=1, duration=30, max_requests=1)
        meter = CpuMeter(service_pids)
        result = loadgen.run_sync(s.name, s.target, repeat, connections=opts.connections, duration=opts.duration)
        cpu = meter.per_request(result.requests)
        waited = meter.waited()
        rows.append(
            {
                **result.summary(),
                "server_cpu_ms": round(sum(cpu.values()), 2),
                "cpu_ms_per_service": cpu,
                "cpu_split": ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items()),
                "services_waited_s": round(sum(waited.values()), 2),
                "waited_per_service_s": {name: round(w, 2) for name, w in waited.items()},
            }
        )
    return rows


def first_timing(lab: Lab, ceiling: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The keep-alive transport cost (section 1's row) and the primitives' first timing, with the TLS handshake
    from section 1's rows."""
    keepalive, handshake = ceiling["rows"][0]["server_cpu_ms"], ceiling["rows"][1]["server_cpu_ms"]
    return keepalive, {**floor.time_primitives(lab), **floor.handshake_ms(keepalive, handshake)}


def settle_floors(sections: dict[str, Any], transport_ms: float, timings: dict[str, dict[str, float]]) -> None:
    """Every floor and ratio of sections 1-4 from the fastest timing of each primitive (floor.fastest), once all
    timings are in: rows measured before a later, faster timing get their floors from it. Section 1 gets the
    primitives' table (every timing and the one used) and the endpoints' inventory; section 4 its itemised floor."""
    prims = floor.fastest(timings)
    if "ceiling" in sections:
        sections["ceiling"]["tables"] = [floor.crypto_table(timings), floor.inventory_table(prims, transport_ms)]
    for row in sections.get("services", {}).get("rows", []):
        if row["name"] in floor.INVENTORY:
            requests = row.get("requests_per_op", 1)
            floor.annotate(row, floor.floor_ms(row["name"], prims, transport_ms, requests=requests))
    for row in sections.get("cmg_path", {}).get("rows", []):
        if row["name"] in floor.THROUGH_CMG:
            floor.annotate(row, floor.cmg_floor_ms(floor.THROUGH_CMG[row["name"]], prims, transport_ms))
    fleet = sections.get("onboarding")
    if fleet is not None and fleet.get("rows") and not fleet.get("failed"):
        fleet["tables"].insert(1, onboarding.floor_table(fleet, transport_ms, prims))


def services_sections(
    service_pids: dict[str, int],
    lab: Lab,
    ceiling_rps: float,
    opts: Options,
    pool: Path | None = None,
) -> dict[str, Any]:
    """Sections 2 and 3: each service's hot endpoint alone against the ceiling, and the CMG path against the
    same request sent to the MP directly (their floors are added at the end of the run, settle_floors; none when
    section 1 failed). `pool`: the fleet's key pool, whose keys the DRS join rows use."""
    joins = int(opts.duration * 400) + 50  # more than one core can join in the time (a new device each)
    chosen_alone = [
        scenarios.entra_token(lab),
        *entra_scenarios.entra_rows(lab, pool, joins),
        *scenarios.mp_direct(lab),
    ]
    alone = measure(chosen_alone, opts, service_pids)
    for s, row in zip(chosen_alone, alone, strict=True):
        row["requests_per_op"] = s.requests
        row["ratio_to_ceiling"] = round(row["rps"] / ceiling_rps, 3) if ceiling_rps else 0
    chosen = scenarios.through_cmg(lab)
    via_cmg = measure(chosen, opts, service_pids)
    direct = {row["name"]: row for row in alone}
    for s, proxied in zip(chosen, via_cmg, strict=True):
        rps = direct[s.direct]["rps"]
        proxied["ratio_to_mp_direct"] = round(proxied["rps"] / rps, 3) if rps else 0
        proxied["mp_direct_cpu_ms"] = direct[s.direct]["server_cpu_ms"]
        proxied["cmg_added_cpu_ms"] = round(proxied["server_cpu_ms"] - proxied["mp_direct_cpu_ms"], 2)
    cpu_note = (
        "server_cpu_ms: CPU time of every service process per request (cpu_split: by process, ms). "
        "services_waited_s: seconds the service processes' threads were runnable but not running during the row "
        "(schedstat, summed over the processes): near or over the row's duration, the host's other load kept the "
        "services off their CPU and the row's rps and latency say so, not the code."
    )
    return {
        "services": {
            "title": "2. Hot endpoints, each service alone (ratio to the keep-alive ceiling and to the "
            "endpoint's floor)",
            "note": "Keep-alive connections; every service process pinned to the server CPU. A row is one "
            "operation: the device token's is two requests (a srv_challenge nonce, then the request signed with "
            "the device key after it arrives, as the agent does; requests_per_op, and its floor counts both "
            "transports); each DRS join registers a new device (keys and CSR made before the measurement); the "
            "AAD and BulkRegistration CCM_STS rows carry the device's Entra token or a site-issued bulk token "
            "with the proof of possession. " + cpu_note + " " + FLOOR_NOTE,
            "columns": [
                *COLUMNS,
                "requests_per_op",
                "ratio_to_ceiling",
                "server_cpu_ms",
                "floor_ms",
                "floor_rps",
                "ratio_to_floor",
                "cpu_ratio_to_floor",
                "cpu_split",
            ],
            "rows": alone,
        },
        "cmg_path": {
            "title": "3. Through the CMG: client -> CMG -> channel -> connection point -> MP",
            "note": "The same requests as section 2, ratio to the MP answering directly. "
            "CMG, connection point and MP share the server CPU, so the ratio cannot pass "
            "mp_direct_cpu_ms / server_cpu_ms. cmg_added_cpu_ms: server_cpu_ms - "
            "mp_direct_cpu_ms (the CMG's and the connection point's share, goal <= 1 ms). floor: "
            "the MP's, the CMG's own check and two more keep-alive hops. " + cpu_note,
            "columns": [
                *COLUMNS,
                "ratio_to_mp_direct",
                "server_cpu_ms",
                "mp_direct_cpu_ms",
                "cmg_added_cpu_ms",
                "floor_ms",
                "ratio_to_floor",
                "cpu_ratio_to_floor",
                "cpu_split",
                "services_waited_s",
            ],
            "rows": via_cmg,
        },
    }


# each section's budget before the load factor (guard.py): generous, so that only a hang or a machine far
# slower than expected reaches it; what a section is sized by (duration, fleet, held connections) counts
def budgets(opts: Options) -> dict[str, float]:
    per_row = opts.duration + 40  # a measurement, its one warm-up request and its processes' lag
    return {
        "ceiling": 120 + 2 * per_row,
        "key pool": 120 + 0.5 * max(opts.fleet_sizes),  # generated once, reused by later runs
        "services": 300 + 16 * per_row,
        "profiles": 180 + 3 * max(opts.duration, hotspots.MIN_SECONDS) * 4,
        "onboarding": sum(300 + 3 * n for n in opts.fleet_sizes),
        "connections": 300 + opts.hold / 10 + 4 * opts.duration,
        "storm": 3 * (120 + opts.storm / 20) + 120,
        "workers": opts.scaling_rounds * 2 * (240 + 3 * (opts.duration + 2 + 40)),
    }


def run(
    lab: Lab,
    out_dir: Path,
    opts: Options,
    *,
    port: int,
    pool: Path,
    only: tuple[frozenset[str], str] | None = None,
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Every section in turn (or those of `only`: sections.select's keys and its sentence for the report), each
    within its budget; `pool` is the fleet's key pool file (made or grown when too small). Returns the report's
    paths and the sections that failed (also in the report)."""
    chosen, ran = only if only is not None else (frozenset(TITLES), "")
    pin_self()
    # before the services start: they inherit it (the CMG holds `hold` sockets, the bench their client ends)
    nofile = procinfo.lift_nofile(max(held.files_needed(opts.hold), opts.storm + storm.SPARE_FILES))
    guard = Guard()
    budget = budgets(opts)
    sections: dict[str, Any] = {}
    transport_ms: float | None = None
    timings: dict[str, dict[str, float]] = {}  # the primitives' timings by moment (floor.MOMENTS)

    def measure(name: str, run: Callable[[], dict[str, Any]]) -> None:
        """Section NAME, measured by RUN under its title and time budget (a failure reported in its place)."""
        sections[name] = guard.section(name, TITLES[name], budget[name], run)

    if "ceiling" in chosen:
        measure("ceiling", lambda: transport_ceiling(lab, port, opts))
        first = (
            None
            if sections["ceiling"].get("failed")
            else guard.run("ceiling", "floors", budget["ceiling"], lambda: first_timing(lab, sections["ceiling"]))
        )
        if first is not None:
            transport_ms, timings["after_s1_ms"] = first

    def time_again(moment: str) -> None:
        """The primitives timed once more (the host's speed drifts over a run; the fastest timing is used)."""
        if transport_ms is None:
            return
        again = guard.run("ceiling", f"floors ({moment})", budget["ceiling"], lambda: floor.time_primitives(lab))
        if again is not None:
            timings[moment] = again

    if chosen & {"services", "onboarding"}:
        guard.run(
            "key pool", "key pool", budget["key pool"], lambda: onboarding.ensure_pool(pool, max(opts.fleet_sizes))
        )
    profiles: list[dict[str, Any]] | str | None = None
    if chosen & {"services", "profiles"}:
        with running(lab) as procs:
            service_pids = pids(procs)
            if "services" in chosen:
                ceiling_rows = sections.get("ceiling", {}).get("rows")
                ceiling_rps = ceiling_rows[0]["rps"] if ceiling_rows else 0.0
                found = guard.run(
                    "services",
                    TITLES["services"],
                    budget["services"],
                    lambda: services_sections(service_pids, lab, ceiling_rps, opts, pool),
                )
                sections.update(
                    found
                    if found is not None
                    else {key: guard.stub("services", TITLES[key]) for key in ("services", "cmg_path")}
                )
            if "profiles" in chosen and opts.profile:
                profiles = guard.run(
                    "profiles",
                    TITLES["profiles"],
                    budget["profiles"],
                    lambda: hotspots.profile_section(lab, service_pids, opts.duration),
                )
                if profiles is None:
                    profiles = "profiling failed: " + guard.failed[-1]["reason"]
        time_again("after_s3_ms")
    if "onboarding" in chosen:
        measure(
            "onboarding", lambda: onboarding.onboarding_section(lab, opts.fleet_sizes, opts.fleet_concurrency, pool)
        )
    if "connections" in chosen:
        measure("connections", lambda: held.connections_section(lab, opts.hold, opts.duration, nofile))
    if "profiles" in chosen:
        sections["profiles"] = hotspots.section(profiles, sections)
    if "storm" in chosen:
        measure("storm", lambda: storm.storm_section(lab, opts.storm, nofile))
    if "workers" in chosen:
        measure(
            "workers", lambda: scaling.scaling_section(lab, opts.connections, opts.duration, rounds=opts.scaling_rounds)
        )
    if "profiles" in chosen:
        # section 6's table of the load generator's change: its after is section 8's, measured last
        workers = sections.get("workers", {})
        sections["profiles"].setdefault("tables", []).insert(2, hotspots.loadgen_table(workers))
        sections["profiles"]["tables"].insert(3, hotspots.writers_table(workers))
        sections["profiles"]["section_seconds"] = guard.seconds  # where a slow run's time went (JSON only)
    time_again("end_ms")
    if transport_ms is not None:
        settle_floors(sections, transport_ms, timings)
    settings = asdict(opts) | ({"sections": ran} if ran else {})
    json_path, md_path = report.write(out_dir, sections, settings=settings, failed=guard.failed)
    return json_path, md_path, guard.failed
