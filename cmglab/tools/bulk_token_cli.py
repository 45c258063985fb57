"""`cmglab bulk-token`: BulkRegistrationTokenTool.exe for the lab site (seeds 003/004).

`new [--lifetime MIN]` signs a bulk registration token with the site signing key and records its
GUID and lifetime in the site database (never the token); `list`, `block GUID`, `unblock GUID`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cmglab.tools.output import print_rows
from cmglab.tools.site_store import open_site_store
from cmglab.wire.site_tokens import BULK_DEFAULT_MINUTES, BULK_MAX_MINUTES

bulk_token_app = typer.Typer(help="Bulk registration tokens (BulkRegistrationTokenTool.exe).", no_args_is_help=True)
console = Console()
LabOption = Annotated[Path, typer.Option("--lab", envvar="CMGLAB_LAB_DIR", help="The lab directory.")]
DEFAULT_LAB = Path(".cmglab")


@bulk_token_app.command("new")
def new(
    lab: LabOption = DEFAULT_LAB,
    lifetime: Annotated[
        int, typer.Option("--lifetime", help=f"Validity in minutes (max {BULK_MAX_MINUTES}).")
    ] = BULK_DEFAULT_MINUTES,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Create a bulk registration token: prints its GUID, validity period and the token."""
    if not 1 <= lifetime <= BULK_MAX_MINUTES:
        console.print(f"[red]The lifetime must be between 1 and {BULK_MAX_MINUTES} minutes (7 days).[/red]")
        raise typer.Exit(1)
    the_lab, store = open_site_store(lab, seed=False)
    token, guid, start, end = the_lab.site_signer().bulk_token(minutes=lifetime)
    store.add_bulk_token(guid, lifetime, start, end)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "guid": guid,
                    "not_before": start.isoformat(),
                    "not_after": end.isoformat(),
                    "lifetime_minutes": lifetime,
                    "token": token,
                }
            )
        )
        return
    typer.echo(f"Token GUID: {guid}")
    typer.echo(f"Token validity: from {start:%Y-%m-%d %H:%M:%S}Z to {end:%Y-%m-%d %H:%M:%S}Z ({lifetime} minutes)")
    typer.echo("Bulk registration token (it is not stored by the site: copy it now):")
    typer.echo(token)


@bulk_token_app.command("list")
def list_tokens(
    lab: LabOption = DEFAULT_LAB,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The bulk registration tokens the site knows (GUID, lifetime, state): the GUID is what `block` and
    `unblock` take."""
    # no seed: this command and new/block/unblock touch only the bulk token table, never the site's settings
    _, store = open_site_store(lab, seed=False)
    rows = store.bulk_tokens()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_rows(
        console,
        "bulk registration tokens",
        ("GUID", "state", "valid from (UTC)", "valid to (UTC)"),
        [
            (
                r["guid"],
                "blocked" if r["blocked"] else ("expired" if r["expired"] else "active"),
                _when(r["not_before"]),
                _when(r["not_after"]),
            )
            for r in rows
        ],
    )


def _when(iso: str) -> str:
    """2026-11-25T15:45:12.123+00:00 -> 2026-11-25 15:45:12 (the listing's times are UTC)."""
    return iso[:19].replace("T", " ")


def _set_blocked(lab_dir: Path, guid: str, blocked: bool) -> None:
    _, store = open_site_store(lab_dir, seed=False)
    if not store.set_bulk_blocked(guid, blocked):
        console.print(f"[red]No bulk registration token with GUID {guid}.[/red]")
        raise typer.Exit(1)
    typer.echo(f"Bulk registration token {guid.lower()} {'blocked' if blocked else 'unblocked'}.")


@bulk_token_app.command("block")
def block(guid: str, lab: LabOption = DEFAULT_LAB) -> None:
    """Block a bulk registration token: clients can no longer register with it."""
    _set_blocked(lab, guid, True)


@bulk_token_app.command("unblock")
def unblock(guid: str, lab: LabOption = DEFAULT_LAB) -> None:
    """Unblock a previously blocked bulk registration token."""
    _set_blocked(lab, guid, False)
