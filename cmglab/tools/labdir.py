"""What every `cmglab` sub-command shares: the `--lab` option and loading the lab it names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cmglab.core.settings import Settings
from cmglab.runtime.lab import Lab, LabNotInitialised

LabOption = Annotated[Path, typer.Option("--lab", envvar="CMGLAB_LAB_DIR", help="The lab directory.")]
DEFAULT_LAB = Path(".cmglab")
console = Console()


def load_lab(lab_dir: Path) -> Lab:
    """The lab in `lab_dir`; exit 2 with the reason when it has not been initialised."""
    try:
        return Lab.load(lab_dir, Settings(lab_dir=lab_dir))
    except LabNotInitialised as e:
        console.print(str(e), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from e
