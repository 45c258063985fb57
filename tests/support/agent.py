"""Helpers for driving a lab device from tests the way a user does: the console scripts as
subprocesses, the device's CMTrace logs read back as plain messages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cmglab.agent.device import Device

_RECORD = re.compile(r"<!\[LOG\[(.*?)\]LOG\]!>", re.DOTALL)


def run(
    module: str, *args: str, lab_dir: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> args...` (cmglab.agent.ccmsetup, cmglab.agent.dsregcmd, cmglab, ...)."""
    full_env = {**os.environ, "CMGLAB_REGTASK_INTERVAL": "0.2", **(env or {})}
    if lab_dir is not None:
        full_env["CMGLAB_LAB_DIR"] = str(lab_dir)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )


def messages(path: Path) -> list[str]:
    """The messages of a CMTrace log, in order."""
    if not path.exists():
        return []
    return _RECORD.findall(path.read_text(encoding="utf-8", errors="replace"))


def log_of(device: Device, name: str) -> str:
    """The messages of a device log by file name (`ccmsetup.log` or a CCM log), one per line."""
    path = device.ccmsetup_log_path if name == "ccmsetup.log" else device.ccm_log_path(name)
    return "\n".join(messages(path))


def assert_lines(device: Device, name: str, *patterns: str) -> None:
    text = log_of(device, name)
    missing = [p for p in patterns if not re.search(p, text, re.IGNORECASE | re.MULTILINE)]
    assert not missing, f"{name} lacks {missing}:\n{text[-4000:]}"


def new_device(lab_dir: Path, home: Path, *options: str) -> Device:
    """`cmglab device create --lab LAB --home HOME [options]`."""
    result = run("cmglab", "device", "create", "--lab", str(lab_dir), "--home", str(home), *options)
    assert result.returncode == 0, result.stderr + result.stdout
    return Device.open(home)
