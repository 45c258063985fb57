"""`cmglab clients`: the site's clients and its conflicting records (Monitoring > Conflicting Records).

A registration that proposes a registered SMSID without being its owner (another signing key, Entra
device or PKI certificate) is a conflicting record. The hierarchy setting `conflicting_records` in lab.json
(`site.conflicting_records`, or `POST /_lab/site` on the MP) says what happens: `automatic` creates a new
record for it, `manual` holds the registration (Status 1, pending) until the admin resolves it here:
`new` (a new record), `merge` (the same machine: it updates the registered record), `block` (refused).
The client's next registration attempt takes the resolution.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cmglab.tools.bulk_token_cli import DEFAULT_LAB, LabOption
from cmglab.tools.output import print_rows
from cmglab.tools.site_store import open_site_store
from cmglab.wire.kinds import RESOLUTIONS, ConflictStatus

console = Console()


app = typer.Typer(help="The site's clients and conflicting records.", no_args_is_help=True)


@app.command("list")
def list_clients(
    lab: LabOption = DEFAULT_LAB,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The registered clients: SMSID, name, kind of registration, approval."""
    _, store = open_site_store(lab, seed=False)
    rows = store.clients()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_rows(
        console,
        "clients",
        ("SMSID", "name", "kind", "approval", "signing thumbprint"),
        [(r["sms_id"], r["netbios_name"], r["auth_kind"], str(r["approval"]), r["signing_thumbprint"]) for r in rows],
    )


@app.command("conflicts")
def conflicts(
    lab: LabOption = DEFAULT_LAB,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The conflicting records: the SMSID each proposed, who proposed it, and its resolution."""
    _, store = open_site_store(lab, seed=False)
    rows = store.conflicts()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_rows(
        console,
        "conflicting records",
        ("ID", "SMSID proposed", "name", "kind", "status", "new SMSID"),
        [(str(r["id"]), r["sms_id"], r["netbios_name"], r["kind"], r["status"], r["new_sms_id"] or "") for r in rows],
    )


@app.command("resolve")
def resolve(
    conflict_id: Annotated[int, typer.Argument(help="The ID `cmglab clients conflicts` shows.")],
    action: Annotated[str, typer.Argument(help="new | merge | block")],
    lab: LabOption = DEFAULT_LAB,
) -> None:
    """Resolve a conflicting record; the client's next registration attempt takes it."""
    if action not in RESOLUTIONS:
        console.print(f"[red]The resolution is one of {', '.join(RESOLUTIONS)}.[/red]")
        raise typer.Exit(1)
    _, store = open_site_store(Path(lab), seed=False)
    row = store.resolve_conflict(conflict_id, ConflictStatus(action))
    if row is None:
        console.print(f"[red]No conflicting record {conflict_id}.[/red]")
        raise typer.Exit(1)
    typer.echo(f"Conflicting record {conflict_id} ({row['sms_id']}, {row['netbios_name']}) resolved: {action}.")
