"""`cmglab content ...`: the site's packages, as the console's "Distribute Content" puts them on the DP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cmglab.core.labconfig import save_config
from cmglab.core.settings import Settings
from cmglab.runtime.contentlib import ContentLibrary
from cmglab.runtime.lab import Lab, LabNotInitialised
from cmglab.tools.output import print_rows

app = typer.Typer(help="Packages and applications on the distribution point.", no_args_is_help=True)
LabOption = Annotated[Path, typer.Option("--lab", envvar="CMGLAB_LAB_DIR", help="The lab directory.")]
console = Console()


def _library(path: Path) -> tuple[Lab, ContentLibrary]:
    try:
        lab = Lab.load(path, Settings(lab_dir=path))
    except LabNotInitialised as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from e
    return lab, ContentLibrary(lab.content_dir, lab.config)


@app.command()
def add(
    path: Annotated[Path, typer.Argument(help="A folder (its files and subfolders) or one file.")],
    name: Annotated[str, typer.Option(help="The package's name.")],
    application: Annotated[bool, typer.Option(help="An application's content (Content_<GUID>).")] = False,
    lab: LabOption = Path(".cmglab"),
) -> None:
    """Add a package to the site and distribute it to the DP (served at once, no restart)."""
    lab_, library = _library(lab)
    if not path.exists():
        typer.echo(f"{path}: no such file or folder", err=True)
        raise typer.Exit(2)
    entry = library.add(path, name, kind="application" if application else "package")
    files = library.files(entry)
    console.print(
        f"added {entry.package_id} ({entry.name}): content {entry.content_version}, "
        f"{len(files)} file{'' if len(files) == 1 else 's'}"
    )
    console.print(f"  {lab_.url('distribution-point')}/SMS_DP_SMSPKG$/{entry.content_version}", soft_wrap=True)


@app.command("list")
def list_(
    lab: LabOption = Path(".cmglab"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The packages on the DP: IDs, content IDs, files."""
    _, library = _library(lab)
    rows = [
        {
            "package_id": p.package_id,
            "name": p.name,
            "kind": p.kind,
            "content_version": p.content_version,
            "files": len(files),
            "bytes": sum(f.size for f in files),
        }
        for p, files in ((p, library.files(p)) for p in library.packages())
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_rows(
        console,
        "content on the distribution point",
        ("package", "name", "kind", "content", "files", "bytes"),
        [tuple(str(v) for v in r.values()) for r in rows],
    )


@app.command("dp")
def dp_settings(
    anonymous: Annotated[
        bool | None, typer.Option("--anonymous/--no-anonymous", help="Allow clients to connect anonymously.")
    ] = None,
    https: Annotated[
        bool | None,
        typer.Option("--https/--http", help="HTTPS only, with PKI client certificates (NOCERT_ vdir excepted)."),
    ] = None,
    lab: LabOption = Path(".cmglab"),
) -> None:
    """Show or change the distribution point's properties (applied by a running DP at its next request)."""
    lab_, _ = _library(lab)
    dp = lab_.config.distribution_point
    if anonymous is not None:
        dp.allow_anonymous = anonymous
    if https is not None:
        dp.https = https
    if anonymous is not None or https is not None:
        save_config(lab_.config, Lab.config_path(lab_.dir))
    console.print(f"allow clients to connect anonymously: {dp.allow_anonymous}; HTTPS only: {dp.https}")
