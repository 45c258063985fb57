"""`cmglab fleet --count N [--concurrency C]`, `cmglab fleet keys --count N`, and Locust: `cmglab fleet locust
ARGS` (every Locust user one device, distributed over machines) with `cmglab fleet export` for its workers."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Fleet mode: many simulated devices join, install through the CMG, register and fetch policy.",
    invoke_without_command=True,
)
console = Console()

LabOption = Annotated[Path, typer.Option("--lab", envvar="CMGLAB_LAB_DIR", help="The lab directory.")]
# what a fleet device talks to (the console only watches)
NEEDED = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")


@app.callback()
def fleet(
    ctx: typer.Context,
    lab: LabOption = Path(".cmglab"),
    count: Annotated[int, typer.Option(min=1, help="Devices to onboard.")] = 10,
    concurrency: Annotated[int, typer.Option(min=1, help="Devices onboarding at once.")] = 8,
    key_pool: Annotated[
        Path | None,
        typer.Option(help="Pre-generated keys (`cmglab fleet keys`): a lab shortcut, real devices make fresh keys."),
    ] = None,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Fleet directory (device homes); default <lab>/fleet/<time>.")
    ] = None,
    crl_check: Annotated[bool, typer.Option(help="Devices check CRLs, as ccmsetup does by default.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON.")] = None,
) -> None:
    """Onboard COUNT devices against the lab (services started for the run unless already up)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cmglab.tools.fleet import runner, summary
    from cmglab.tools.labdir import load_lab
    from cmglab.tools.orchestrate import health
    from cmglab.tools.processes import LabProcesses

    the_lab = load_lab(lab)
    procs = LabProcesses(the_lab)
    down = [s for s, state in health(the_lab, NEEDED).items() if state != "healthy"]
    if down:
        console.print(f"starting {', '.join(down)}")
        procs.ensure(*down)
    failed = 0
    columns = (
        TextColumn("[bold]onboarding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("fleet", total=count, failed="")

            def done(result: runner.DeviceResult) -> None:
                nonlocal failed
                failed += not result.ok
                progress.update(task, advance=1, failed=f"[red]{failed} failed" if failed else "")

            fleet_run = runner.run(
                the_lab,
                count,
                concurrency=concurrency,
                root=directory,
                key_pool=key_pool,
                crl_check=crl_check,
                on_done=done,
            )
    finally:
        procs.stop_all()
    result = summary.summarise(fleet_run)
    console.print(summary.render(result))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
    if result["failed"]:
        raise typer.Exit(1)


@app.command()
def keys(
    lab: LabOption = Path(".cmglab"),
    count: Annotated[int, typer.Option(min=1, help="Devices the pool is for (4 keys each).")] = 100,
    out: Annotated[Path | None, typer.Option(help="Pool file; default <lab>/fleet/keypool.pem.")] = None,
) -> None:
    """Pre-generate the RSA keys of COUNT devices (a lab shortcut: real devices make fresh keys)."""
    from cmglab.tools.fleet.keypool import generate

    path = out or lab / "fleet" / "keypool.pem"
    with console.status(f"generating {count * 4} RSA keys..."):
        total = generate(path, count)
    console.print(f"{total} keys in {path}: use `cmglab fleet --key-pool {path} ...`")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def locust(ctx: typer.Context) -> None:
    """Run Locust on the fleet's locustfile: each Locust user is one device. Every argument goes to locust:
    its own (`cmglab fleet locust -- --help`) and the fleet's: --lab, --key-pool, --fleet-dir, --cycle-wait,
    --renew-every, --no-crl-check (README, "Many machines: Locust")."""
    # exec'd, never imported here: Locust monkey-patches the standard library (gevent) when imported
    locustfile = Path(__file__).with_name("locustfile.py")
    os.execv(sys.executable, [sys.executable, "-m", "locust", "-f", str(locustfile), *ctx.args])


@app.command()
def export(
    address: Annotated[
        str,
        typer.Option(
            help="The lab machine's address as the worker machines reach "
            "it (its services listening there: CMGLAB_BIND=0.0.0.0)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory to write (copy it to each worker machine).")],
    lab: LabOption = Path(".cmglab"),
    key_pool: Annotated[
        Path | None, typer.Option(help="Also copy this key pool (workers share it out by worker index).")
    ] = None,
) -> None:
    """What a Locust worker on another machine needs of the lab: lab.json, the CA bundle and a hosts file
    mapping every lab name to ADDRESS. No CA or service keys, no admin token (lab.json has the lab users'
    passwords: devices join with them)."""
    from cmglab.tools.labdir import load_lab

    the_lab = load_lab(lab)
    (out / "pki").mkdir(parents=True, exist_ok=True)
    shutil.copy2(the_lab.config_path(the_lab.dir), out / "lab.json")
    shutil.copy2(the_lab.pki.ca_bundle, out / "pki" / the_lab.pki.ca_bundle.name)
    entries = [":".join([*entry.split(":", 2)[:2], address]) for entry in the_lab.loopback_resolve()]
    (out / "hosts").write_text("".join(f"{e}\n" for e in entries))
    if key_pool is not None:
        shutil.copy2(key_pool, out / "keypool.pem")
    pool = f" --key-pool {out / 'keypool.pem'}" if key_pool is not None else ""
    console.print(f"{out}: on each worker, `cmglab fleet locust --worker --master-host MASTER --lab {out}{pool}`")
