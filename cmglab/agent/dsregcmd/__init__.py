"""`dsregcmd`: Entra join, hybrid join, leave and status (Windows' dsregcmd.exe)."""

from cmglab.agent.dsregcmd.cli import main

__all__ = ["main"]
