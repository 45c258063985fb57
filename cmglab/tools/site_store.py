"""The site database as the lab's commands open it (`cmglab bulk-token`, `cmglab clients`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cmglab.runtime.lab import Lab
from cmglab.tools.labdir import load_lab

if TYPE_CHECKING:
    from cmglab.services.management_point.store import Store


def open_site_store(lab_dir: Path, *, seed: bool) -> tuple[Lab, Store]:
    """The lab and its site database; exit 2 with the reason when there is no lab. `seed`: write lab.json's
    settings, tenants and the default policies over its rows first, as the MP's start does; without it, the
    database as the running site holds it (nothing written over its settings)."""
    # imported here: the MP's store (SQLAlchemy) loads only for the commands that use it
    from cmglab.services.management_point.policy_defaults import default_policies
    from cmglab.services.management_point.store import Store

    lab = load_lab(lab_dir)  # the reason on one line, never read as markup (a path may hold brackets)
    return lab, Store(lab, policy_factory=default_policies) if seed else Store(lab, seed=False)
