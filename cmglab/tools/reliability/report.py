"""The campaign's numbers per service and the two files it writes (`report.json`, `report.md`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cmglab.tools.reliability.labview import SERVICES

# a finding is kept with enough to reproduce it, and no more (a fuzzed body can be megabytes)
_DETAIL_MAX = 300


@dataclass
class ServiceTally:
    inputs: int = 0  # requests the campaign sent whose target was this service
    fuzzed: int = 0  # of which schemathesis generated
    corpus: int = 0  # of which the hand-made corpus held
    server_errors: int = 0  # 5xx answers this service recorded or sent back
    unhandled: int = 0  # exceptions that escaped: recorder `error` fields + process tracebacks
    unexpected: int = 0  # corpus answers other than the expected refusal
    invariant_violations: int = 0


@dataclass
class Report:
    budget_s: float
    elapsed_s: float = 0.0
    services: dict[str, ServiceTally] = field(default_factory=lambda: {s: ServiceTally() for s in SERVICES})
    operations: dict[str, int] = field(default_factory=dict)  # OpenAPI operations fuzzed per service
    findings: list[dict[str, Any]] = field(default_factory=list)

    def tally(self, service: str) -> ServiceTally:
        return self.services.setdefault(service, ServiceTally())  # the DP's and console's probes too

    def finding(self, kind: str, service: str, what: str, detail: str = "") -> None:
        self.findings.append({"kind": kind, "service": service, "what": what, "detail": detail[:_DETAIL_MAX]})

    def totals(self) -> dict[str, int]:
        keys = ServiceTally.__dataclass_fields__
        return {k: sum(getattr(t, k) for t in self.services.values()) for k in keys}

    def goals_met(self) -> bool:
        t = self.totals()
        return t["server_errors"] == t["unhandled"] == t["unexpected"] == t["invariant_violations"] == 0

    def as_json(self) -> dict[str, Any]:
        return {
            "budget_s": self.budget_s,
            "elapsed_s": round(self.elapsed_s, 1),
            "goals_met": self.goals_met(),
            "totals": self.totals(),
            "services": {k: asdict(v) for k, v in self.services.items()},
            "operations": self.operations,
            "findings": self.findings,
        }

    def markdown(self) -> str:
        rows = [
            "| service | inputs | fuzzed | corpus | 5xx | unhandled | unexpected | invariant violations |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, t in [*self.services.items(), ("**total**", ServiceTally(**self.totals()))]:
            rows.append(
                f"| {name} | {t.inputs} | {t.fuzzed} | {t.corpus} | {t.server_errors} | {t.unhandled} "
                f"| {t.unexpected} | {t.invariant_violations} |"
            )
        lines = [
            f"# Reliability campaign\n\nBudget {self.budget_s:.0f} s, ran {self.elapsed_s:.0f} s; "
            f"goals (0 5xx, 0 unhandled, 0 unexpected, 0 invariant violations): "
            f"{'met' if self.goals_met() else 'NOT met'}.\n",
            *rows,
            "",
        ]
        if self.findings:
            lines += ["## Findings", ""]
            lines += [f"- {f['kind']} at {f['service']}: {f['what']} {f['detail']}".rstrip() for f in self.findings]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.as_json(), indent=2) + "\n")
        (out / "report.md").write_text(self.markdown())
