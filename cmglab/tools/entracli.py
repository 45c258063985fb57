"""`cmglab entra ...`: the lab's Entra as an administrator drives it. `sync` runs one Entra Connect sync
cycle now (the lab AD's computers with a userCertificate become hybrid device objects), as
`Start-ADSyncSyncCycle -PolicyType Delta` does; the running Entra service also syncs on its own schedule
(`CMGLAB_ENTRA_SYNC_INTERVAL`, 30 minutes by default)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

from cmglab.core.settings import Settings
from cmglab.runtime.lab import Lab, LabNotInitialised
from cmglab.wire import httpclient

app = typer.Typer(help="The lab's Entra ID (Entra Connect sync, smart lockout).", no_args_is_help=True)
LabOption = Annotated[Path, typer.Option("--lab", envvar="CMGLAB_LAB_DIR", help="The lab directory.")]


@app.command()
def sync(
    lab: LabOption = Path(".cmglab"),
    as_json: Annotated[bool, typer.Option("--json", help="The cycle's result as JSON.")] = False,
) -> None:
    """One Entra Connect sync cycle now (the Entra service must be running: `cmglab up`)."""
    try:
        the_lab = Lab.load(lab, Settings(lab_dir=lab))
    except LabNotInitialised as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from e
    ctx = httpclient.ssl_context(ca_bundle=the_lab.pki.ca_bundle)
    try:
        with httpclient.client(ctx=ctx, resolve=the_lab.resolve(), timeout=60) as http:
            reply = http.post(
                f"{the_lab.url('entra')}/_lab/sync", headers={"Authorization": f"Bearer {the_lab.admin_token()}"}
            )
    except httpx.HTTPError as e:
        typer.echo(
            f"cmglab entra sync: Entra is not reachable at {the_lab.url('entra')} ({e}); start the lab "
            "with `cmglab up`",
            err=True,
        )
        raise typer.Exit(1) from e
    if reply.status_code != 200:
        typer.echo(f"cmglab entra sync: HTTP {reply.status_code}: {reply.text[:300]}", err=True)
        raise typer.Exit(1)
    result = reply.json()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"Entra Connect sync: {len(result['added'])} device(s) added, {len(result['updated'])} updated, "
        f"{result['unchanged']} unchanged, {len(result['skipped'])} computer(s) without userCertificate"
    )
    for device_id in result["added"]:
        typer.echo(f"  added   {device_id}")
    for device_id in result["updated"]:
        typer.echo(f"  updated {device_id}")


@app.command()
def unlock(
    upn: Annotated[str, typer.Argument(help="The user's UPN, e.g. alice@contoso.onmicrosoft.com")],
    lab: LabOption = Path(".cmglab"),
) -> None:
    """End a smart lockout (AADSTS50053) now and forget the user's wrong-password count."""
    from cmglab.services.entra.lockout import Lockouts
    from cmglab.services.entra.nonces import NonceKey
    from cmglab.services.entra.store import Store

    try:
        the_lab = Lab.load(lab, Settings(lab_dir=lab))
    except LabNotInitialised as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from e
    store = Store(the_lab.database_url("entra"), the_lab.config, NonceKey.of_lab(the_lab))
    try:
        unlocked = Lockouts(store, the_lab.config.smart_lockout).unlock(upn)
    finally:
        store.dispose()
    typer.echo(f"{upn}: unlocked." if unlocked else f"{upn}: no failed sign-ins recorded; nothing to unlock.")
