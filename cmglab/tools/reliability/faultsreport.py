"""A faults-under-load run's numbers and the two files it writes (`faults.json`, `faults.md`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cmglab.tools.reliability.faults import Applied
from cmglab.tools.reliability.watch import Slow

_LISTED = 20  # findings listed in the markdown (all of them are in the JSON)


@dataclass
class FaultsReport:
    devices: int
    concurrency: int
    timeouts: dict[str, float]  # what the services and the agent were configured with, seconds
    elapsed_s: float = 0.0
    cycle_s: dict[str, float] = field(default_factory=dict)  # the first cycle (under faults), the next one
    faults: list[Applied] = field(default_factory=list)
    first_cycle_failed: dict[str, int] = field(default_factory=dict)  # by reason
    recovered: int = 0  # failed their first cycle, succeeded on their next
    unrecovered: list[str] = field(default_factory=list)  # device: reason (goal: none)
    lost: list[str] = field(default_factory=list)  # completed operations lost (goal: none)
    hanging: list[Slow] = field(default_factory=list)  # requests past their timeout (goal: none)
    client_requests: dict[str, Any] = field(default_factory=dict)  # count, no reply, by status
    longest_s: dict[str, float] = field(default_factory=dict)  # longest request per service
    retries: dict[str, int] = field(default_factory=dict)  # the clients' retry lines, by kind
    checked: dict[str, int] = field(default_factory=dict)  # what the lost-operation checks looked at
    orphans: int = 0  # site registrations no device holds (a reply lost after the work: not a loss)
    invariant_violations: list[str] = field(default_factory=list)

    def goals(self) -> dict[str, int]:
        return {
            "completed operations lost": len(self.lost),
            "requests left hanging": len(self.hanging),
            "devices that did not recover": len(self.unrecovered),
        }

    def goals_met(self) -> bool:
        return (
            not any(self.goals().values())
            and not self.invariant_violations
            and all(not f.error and f.devices_active for f in self.faults)
        )

    def as_json(self) -> dict[str, Any]:
        return {"goals_met": self.goals_met(), "goals": self.goals(), **asdict(self)}

    def markdown(self) -> str:
        first_failed = sum(self.first_cycle_failed.values())
        lines = [
            "# Faults under load",
            "",
            f"{self.devices} devices, {self.concurrency} at a time, {self.elapsed_s:.0f} s; timeouts: "
            + ", ".join(f"{k} {v:g} s" for k, v in self.timeouts.items())
            + ". Goals: "
            + ("met" if self.goals_met() else "NOT met")
            + ".",
            "",
            "| goal | count |",
            "|---|---:|",
            *[f"| {k} | {v} |" for k, v in self.goals().items()],
            f"| invariant violations | {len(self.invariant_violations)} |",
            "",
            f"First cycle ({self.cycle_s.get('first', 0):g} s, under the faults below): "
            f"{self.devices - first_failed} devices onboarded, {first_failed} failed; "
            f"{self.recovered} of those recovered on their next cycle ({self.cycle_s.get('next', 0):g} s for every "
            f"device's next cycle). Orphaned site registrations (the site did "
            f"the work, the client never saw the reply and registered again): {self.orphans}.",
            "",
            "| fault | at s | took s | devices done | devices active | what happened |",
            "|---|---:|---:|---:|---:|---|",
            *[
                f"| {f.fault} | {f.at_s:g} | {f.seconds:g} | {f.devices_done} | {f.devices_active} "
                f"| {f.error or f.detail} |"
                for f in self.faults
            ],
            "",
            "| client retries (log lines) | count |",
            "|---|---:|",
            *[f"| {k} | {v} |" for k, v in self.retries.items()],
            "",
            f"Client requests: {self.client_requests}. Longest request per service (s): {self.longest_s}. "
            f"Checked: {self.checked}.",
            "",
        ]
        for title, items in (
            (
                "First-cycle failures (the first refusal each device saw)",
                [f"{n} × {r}" for r, n in self.first_cycle_failed.items()],
            ),
            ("Lost", self.lost),
            ("Did not recover", self.unrecovered),
            ("Hanging", [f"{s.where}: {s.what} {s.seconds} s (bound {s.bound:g} s)" for s in self.hanging]),
            ("Invariant violations", self.invariant_violations),
        ):
            if items:
                lines += [f"## {title}", "", *[f"- {i}" for i in items[:_LISTED]], ""]
        return "\n".join(lines)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "faults.json").write_text(json.dumps(self.as_json(), indent=2) + "\n")
        (out / "faults.md").write_text(self.markdown())
