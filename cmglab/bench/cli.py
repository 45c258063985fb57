"""`cmglab bench`: run the benchmarks and write bench/results/report.{json,md}."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.runtime.lab import Lab

console = Console()


def bench(out: Annotated[Path, typer.Option(help="Where report.json and report.md go.")] = Path("bench/results"),
          duration: Annotated[float, typer.Option(help="Seconds per measurement.")] = 5.0,
          connections: Annotated[int, typer.Option(help="Concurrent connections of the load generator.")] = 16,
          lab: Annotated[Path | None, typer.Option(help="Lab directory; a fresh one under OUT by default.")] = None,
          ) -> None:
    """Measure the transport ceiling and the services against it (not a timed test)."""
    from cmglab.bench import runner
    from cmglab.processes import free_ports, isolated_lab

    lab_dir = lab or out / "lab"
    the_lab = Lab.load(lab_dir) if (lab_dir / "lab.json").exists() else isolated_lab(lab_dir)
    (port,) = free_ports(1)
    with console.status("benchmarking..."):
        json_path, md_path = runner.run(the_lab, out, duration=duration, connections=connections, port=port)
    console.print(md_path.read_text())
    console.print(f"report: {json_path} and {md_path}")
