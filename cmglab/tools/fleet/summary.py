"""The fleet summary: succeeded, failed by reason, p50/p95/p99 per step, requests per second per
service. One dict (JSON, the bench report) and its rich rendering."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Group
from rich.table import Table

from cmglab.tools.fleet.runner import FleetRun
from cmglab.tools.fleet.steps import STEPS


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summarise(run: FleetRun) -> dict[str, Any]:
    ok = [r for r in run.results if r.ok]
    steps = []
    for step in (*STEPS, "other"):
        samples = [r.steps[step] * 1000 for r in ok if step in r.steps]
        if samples:
            steps.append(
                {
                    "step": step,
                    "devices": len(samples),
                    "p50_ms": round(percentile(samples, 50), 1),
                    "p95_ms": round(percentile(samples, 95), 1),
                    "p99_ms": round(percentile(samples, 99), 1),
                }
            )
    totals = [r.seconds * 1000 for r in ok]
    steps.append(
        {
            "step": "whole onboarding",
            "devices": len(totals),
            "p50_ms": round(percentile(totals, 50), 1),
            "p95_ms": round(percentile(totals, 95), 1),
            "p99_ms": round(percentile(totals, 99), 1),
        }
    )
    seconds = run.seconds or 1e-9
    return {
        "devices": len(run.results),
        "succeeded": len(ok),
        "failed": len(run.results) - len(ok),
        "failed_by_reason": dict(Counter(r.reason for r in run.results if not r.ok).most_common()),
        "seconds": round(run.seconds, 2),
        "concurrency": run.concurrency,
        "onboardings_per_s": round(len(ok) / seconds, 2),
        "steps": steps,
        "requests_per_s": {s: round(n / seconds, 1) for s, n in sorted(run.requests.items())},
        "requests": dict(sorted(run.requests.items())),
        "key_pool": {"pooled": run.pooled_keys, "fresh": run.fresh_keys},
    }


def render(summary: dict[str, Any]) -> Group:
    head = Table(title="Fleet", show_header=False)
    for label, key in (
        ("devices", "devices"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("concurrency", "concurrency"),
        ("seconds", "seconds"),
        ("onboardings/s", "onboardings_per_s"),
    ):
        head.add_row(label, str(summary[key]))
    pool = summary["key_pool"]
    head.add_row(
        "key pool",
        f"{pool['pooled']} keys, {pool['fresh']} generated on the spot"
        if pool["pooled"]
        else "none (every key generated on the spot)",
    )
    steps = Table(title="Per step (time in the step's requests, per device)")
    for col in ("step", "devices", "p50 ms", "p95 ms", "p99 ms"):
        steps.add_column(col, justify="left" if col == "step" else "right")
    for row in summary["steps"]:
        steps.add_row(
            row["step"], str(row["devices"]), f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}", f"{row['p99_ms']:.1f}"
        )
    rates = Table(title="Requests per service")
    for col in ("service", "requests", "req/s"):
        rates.add_column(col, justify="left" if col == "service" else "right")
    for service, n in summary["requests"].items():
        rates.add_row(service, str(n), f"{summary['requests_per_s'][service]:.1f}")
    parts: list[Table] = [head, steps, rates]
    if summary["failed_by_reason"]:
        failures = Table(title="Failed by reason")
        failures.add_column("reason")
        failures.add_column("devices", justify="right")
        for reason, n in summary["failed_by_reason"].items():
            failures.add_row(reason, str(n))
        parts.append(failures)
    return Group(*parts)
