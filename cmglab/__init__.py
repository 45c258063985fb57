"""cmglab: an Entra ID + ConfigMgr CMG/MP lab."""

import os
import sys


def _unshadow_project_packages() -> None:
    """A console script runs with its bin directory first on sys.path, and some tools install plain
    modules there (impacket, a test dependency, installs `services.py`), which would shadow this
    project's `services` package: drop that entry. The script itself needs nothing from it."""
    script_dir = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    if sys.path and script_dir and os.path.abspath(sys.path[0] or ".") == script_dir \
            and os.path.exists(os.path.join(script_dir, "services.py")):
        del sys.path[0]


_unshadow_project_packages()
