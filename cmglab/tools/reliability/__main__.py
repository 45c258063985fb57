"""`python -m cmglab.tools.reliability --out reliability/results [--budget SECONDS] [--lab-dir DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmglab.tools.reliability import campaign


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmglab.tools.reliability", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reliability/results"))
    parser.add_argument("--budget", type=float, default=600, help="seconds for the whole campaign")
    parser.add_argument("--lab-dir", type=Path, help="keep the campaign's lab here (default: a temporary one)")
    args = parser.parse_args(argv)
    report = campaign.run(args.out, args.budget, lab_dir=args.lab_dir)
    sys.stdout.write(report.markdown())
    return 0 if report.goals_met() else 1


if __name__ == "__main__":
    sys.exit(main())
