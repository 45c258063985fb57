"""The benchmark report: one JSON document and a Markdown rendering of it."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "date": datetime.now(UTC).isoformat(timespec="seconds")}


def write(out_dir: Path, sections: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), **sections}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(render(doc))
    return json_path, md_path


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    parts = [f"# cmglab benchmark report\n\n{m['date']} · Python {m['python']} · {m['cpus']} CPUs · "
             f"{m['platform']}\n"]
    for key, section in doc.items():
        if key == "machine":
            continue
        parts.append(f"\n## {section.get('title', key)}\n\n{section.get('note', '')}\n\n")
        if section.get("rows"):
            parts.append(_table(section["rows"], section["columns"]))
    return "".join(parts)
