"""`cmglab bench [--quick] [--only SECTION]`: run the benchmarks (all or some) and write report.{json,md}."""

from __future__ import annotations

import dataclasses
import shutil
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cmglab.runtime.lab import Lab

console = Console()


def _unwind(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def bench(
    out: Annotated[Path, typer.Option(help="Where report.json and report.md go.")] = Path("bench/results"),
    quick: Annotated[
        bool, typer.Option(help="Every section at tiny sizes (seconds, not minutes), no profiling: a smoke run.")
    ] = False,
    duration: Annotated[float | None, typer.Option(help="Seconds per measurement.")] = None,
    connections: Annotated[int | None, typer.Option(help="Concurrent connections of the load generator.")] = None,
    fleet: Annotated[list[int] | None, typer.Option(help="Fleet sizes of section 4 (repeat the option).")] = None,
    fleet_concurrency: Annotated[int | None, typer.Option(help="Devices onboarding at once.")] = None,
    hold: Annotated[int | None, typer.Option(help="Keep-alive connections held at the CMG.")] = None,
    storm: Annotated[int | None, typer.Option(help="Connections of each kind in the handshake storms.")] = None,
    profile: Annotated[bool | None, typer.Option(help="Profile the hot endpoints with py-spy.")] = None,
    lab: Annotated[
        Path | None, typer.Option(help="Lab directory; by default a fresh one in OUT/lab, remade for every run.")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this section (repeat the option): its number 1-8 or name (ceiling, services, cmg, "
            "onboarding, held, profiles, storm, workers). 2 and 3 are measured together; 2-4 also run 1 for "
            "their floors."
        ),
    ] = None,
) -> None:
    """Measure the transport ceiling, the services against it, whole onboardings, held connections and profiles (measurements, not timed tests)."""  # noqa: E501
    from cmglab.runtime.sockets import reserve_ports
    from cmglab.tools.bench import runner, sections
    from cmglab.tools.processes import isolated_lab

    try:  # before anything starts: a wrong name is the caller's mistake, said at once
        chosen = sections.select(only) if only else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--only") from None

    base = runner.QUICK if quick else runner.Options()
    given: dict[str, Any] = {
        "duration": duration,
        "connections": connections,
        "fleet_sizes": tuple(fleet) if fleet else None,
        "fleet_concurrency": fleet_concurrency,
        "hold": hold,
        "storm": storm,
        "profile": profile,
    }
    opts = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    if lab is not None and (lab / "lab.json").exists():
        the_lab = Lab.load(lab)
    else:  # fresh: an empty site, and ports that are free now (a lab's ports are chosen when it is made)
        lab_dir = lab or out / "lab"
        shutil.rmtree(lab_dir, ignore_errors=True)
        the_lab = isolated_lab(lab_dir)
    (port,) = reserve_ports(1)  # the transport ceiling's: handed to it by the runner
    # the key pool outlives the lab: 4 RSA keys per device take minutes to make for 1,000 devices
    pool = out / "keypool.pem"
    # stopped from outside (SIGTERM: `timeout`, a test's deadline; SIGINT even when started in the background):
    # unwind, so that every section's finally block stops the services it started
    signal.signal(signal.SIGTERM, _unwind)
    signal.signal(signal.SIGINT, _unwind)
    with console.status("benchmarking (minutes; --quick for a smoke run)..."):
        json_path, md_path, failed = runner.run(the_lab, out, opts, port=port, pool=pool, only=chosen)
    print(md_path.read_text())
    console.print(f"report: {json_path} and {md_path}")
    if failed:  # the report is written and says which; the exit status says it too (make bench fails)
        for f in failed:
            console.print(f"[red]failed: {f['title']}: {f['reason']}[/red]")
        raise typer.Exit(1)
