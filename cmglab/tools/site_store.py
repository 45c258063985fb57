"""The site database as the lab's commands open it (`cmglab bulk-token`, `cmglab clients`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from cmglab.core.settings import Settings
from cmglab.runtime.lab import Lab, LabNotInitialised

if TYPE_CHECKING:
    from cmglab.services.management_point.store import Store


def open_site_store(lab_dir: Path, *, seed: bool) -> tuple[Lab, Store]:
    """The lab and its site database; exit 2 with the reason when there is no lab. `seed`: write lab.json's
    settings, tenants and the default policies over its rows first, as the MP's start does; without it, the
    database as the running site holds it (nothing written over its settings)."""
    # imported here: the MP's store (SQLAlchemy) loads only for the commands that use it
    from cmglab.services.management_point.policy_defaults import default_policies
    from cmglab.services.management_point.store import Store

    try:
        lab = Lab.load(lab_dir, Settings(lab_dir=lab_dir))
    except LabNotInitialised as e:
        Console().print(f"[red]{e}[/red]")
        raise typer.Exit(2) from e
    return lab, Store(lab, policy_factory=default_policies) if seed else Store(lab, seed=False)
