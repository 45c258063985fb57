"""Section 4: whole onboardings per second (fleet mode: join, install through the CMG, register, one
policy cycle) and the peak resident memory of every service process during the run.

Each fleet size gets fresh service processes, so that VmHWM (the peak resident set since the process
started) is that run's peak. Devices take their keys from a pre-generated pool (the fleet's documented
lab shortcut): key generation would otherwise be what this measures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cmglab.runtime.lab import Lab
from cmglab.tools.bench import floor, procinfo
from cmglab.tools.bench.pinned import LOAD_CPU, SERVER_CPU, CpuMeter, pids, running
from cmglab.tools.fleet import keypool, runner, summary


def ensure_pool(path: Path, devices: int) -> int:
    """A key pool for `devices` devices at `path`: reused across bench runs, made (or remade) when short."""
    have = path.read_bytes().count(b"-----END PRIVATE KEY-----") if path.exists() else 0
    if have < devices * keypool.KEYS_PER_DEVICE:
        return keypool.generate(path, devices)
    return have


def fleet_run(lab: Lab, devices: int, concurrency: int, pool: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One fleet size: the fleet summary, and per service its start and peak RSS and CPU seconds."""
    with running(lab) as procs:
        service_pids = pids(procs)
        start_rss = {name: procinfo.rss_mb(pid) for name, pid in service_pids.items()}
        meter = CpuMeter({**service_pids, "devices": os.getpid()})  # the fleet runs in this process
        homes = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=lab.dir))
        try:
            result = summary.summarise(runner.run(lab, devices, concurrency=concurrency, root=homes, key_pool=pool))
        finally:
            shutil.rmtree(homes, ignore_errors=True)
        cpu = meter.seconds()
        per_service = [
            {
                "devices": devices,
                "service": name,
                "rss_start_mb": start_rss[name],
                "peak_rss_mb": procinfo.peak_rss_mb(pid),
                "cpu_s": round(cpu[name], 2),
                "cpu_ms_per_onboarding": round(1000 * cpu[name] / max(1, result["succeeded"]), 1),
            }
            for name, pid in service_pids.items()
        ]
    result["devices_cpu_s"] = round(cpu["devices"], 2)
    return result, per_service


def onboarding_section(lab: Lab, sizes: tuple[int, ...], concurrency: int, pool: Path) -> dict[str, Any]:
    ensure_pool(pool, max(sizes))
    throughput, memory, tables, summaries = [], [], [], []
    for devices in sizes:
        result, per_service = fleet_run(lab, devices, concurrency, pool)
        summaries.append(result)
        requests = sum(n for service, n in result["requests"].items() if "via CMG" not in service)
        throughput.append(
            {
                "devices": devices,
                "concurrency": result["concurrency"],
                "succeeded": result["succeeded"],
                "failed": result["failed"],
                "seconds": result["seconds"],
                "onboardings_per_s": result["onboardings_per_s"],
                "requests_per_s": round(requests / result["seconds"], 1) if result["seconds"] else 0,
                "keys_generated": result["key_pool"]["fresh"],
                "services_cpu_s": round(sum(p["cpu_s"] for p in per_service), 2),
                "devices_cpu_s": result["devices_cpu_s"],
                "failed_by_reason": result["failed_by_reason"],
            }
        )
        memory += per_service
        tables.append(
            {
                "title": f"{devices} devices: time in each step's requests, per device (ms)",
                "columns": ["step", "devices", "p50_ms", "p95_ms", "p99_ms"],
                "rows": result["steps"],
            }
        )
        if result["failed_by_reason"]:
            tables.append(
                {
                    "title": f"{devices} devices: failed by reason",
                    "columns": ["reason", "devices"],
                    "rows": [{"reason": r, "devices": n} for r, n in result["failed_by_reason"].items()],
                }
            )
    return {
        "title": "4. Full onboardings per second (fleet mode) and peak RSS of each service",
        "note": f"Each device joins Entra, gets AAD info, tokens and the client through the CMG, registers "
        f"and runs one policy cycle (the agent's own code, in-process threads; keys from a "
        f"pre-generated pool). Services on CPU {SERVER_CPU}, fresh processes per size (peak_rss_mb "
        f"is VmHWM: the largest resident set during that run); devices on CPU {LOAD_CPU}. "
        "requests_per_s counts what the devices sent (a request through the CMG also reaches the MP); "
        "services_cpu_s: CPU time of every service process during the run (the server core's "
        f"capacity is `seconds`), devices_cpu_s: the fleet's own (CPU {LOAD_CPU}).",
        "columns": [
            "devices",
            "concurrency",
            "succeeded",
            "failed",
            "seconds",
            "onboardings_per_s",
            "requests_per_s",
            "services_cpu_s",
            "devices_cpu_s",
            "keys_generated",
        ],
        "rows": throughput,
        "fleet_summaries": summaries,
        "tables": [
            {
                "title": "Memory and CPU per service process",
                "columns": ["devices", "service", "rss_start_mb", "peak_rss_mb", "cpu_s", "cpu_ms_per_onboarding"],
                "rows": memory,
            },
            *tables,
        ],
    }


def floor_table(section: dict[str, Any], transport_ms: float, prims: dict[str, float]) -> dict[str, Any]:
    """The itemised floor of one onboarding beside each service's measured CPU, from the largest fleet."""
    fleet = section["fleet_summaries"][-1]
    done = max(1, fleet["succeeded"])
    asked = {service: n / done for service, n in fleet["requests"].items()}
    forwarded = asked.get("management-point (via CMG)", 0.0)
    requests = {
        "entra": asked.get("entra", 0.0),
        "cmg": asked.get("cmg", 0.0),
        "pki": asked.get("pki", 0.0),
        "management-point": asked.get("management-point", 0.0) + forwarded,
        "cmg-connection-point": forwarded,
    }
    largest = section["rows"][-1]["devices"]
    measured = {
        r["service"]: r["cpu_ms_per_onboarding"] for r in section["tables"][0]["rows"] if r["devices"] == largest
    }
    return floor.onboarding_floor(prims, transport_ms, requests, measured)
