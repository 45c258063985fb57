"""The benchmark report: one JSON document and a Markdown rendering of it.

A section is a title, a note, and either one table (`columns` + `rows`) or several (`tables`: each a
title, columns and rows, and an optional note); a row's value for a column may be missing (rendered empty).
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NOTE = (
    "Measurements, not tests: the machine may be shared with other work while they run, so treat single "
    "numbers as noisy and compare within one report."
)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write(
    out_dir: Path,
    sections: dict[str, Any],
    *,
    settings: dict[str, Any] | None = None,
    failed: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """`failed`: the sections (or steps) that raised or ran out of time (guard.py), listed first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "settings": settings or {}, "failed": failed or [], **sections}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(render(doc))
    return json_path, md_path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |\n" for r in rows)


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    settings = ", ".join(
        f"{k} {', '.join(map(str, v)) if isinstance(v, list | tuple) else v}"
        for k, v in doc.get("settings", {}).items()
    )
    parts = [
        f"# cmglab benchmark report\n\n{m['date']} · Python {m['python']} · {m['cpus']} CPUs · "
        f"{m['platform']}\n\n{settings + '. ' if settings else ''}{NOTE}\n"
    ]
    if doc.get("failed"):
        parts.append(
            "\n**Failed:** "
            + "; ".join(f"{f['title']} ({f['section']}): {f['reason']} after {f['after_s']} s" for f in doc["failed"])
            + ". The other sections ran.\n"
        )
    for key, section in doc.items():
        if key in ("machine", "settings", "failed"):
            continue
        parts.append(f"\n## {section.get('title', key)}\n\n{section.get('note', '')}\n\n")
        if section.get("rows"):
            parts.append(table(section["rows"], section["columns"]))
        for sub in section.get("tables", []):
            parts.append(
                f"\n**{sub['title']}**\n\n"
                + (f"{sub['note']}\n\n" if sub.get("note") else "")
                + (table(sub["rows"], sub["columns"]) if sub["rows"] else "(nothing measured)\n")
            )
    return "".join(parts)
