"""Sampling profiles of a running service (py-spy, attached by PID; needs ptrace: root or
CAP_SYS_PTRACE) while the load generator drives one scenario: which frames the time goes to.

Frames are counted on the active samples only (idle threads excluded): `self` is the share of samples
where the frame is the leaf, `total` the share where it is anywhere on the stack.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

# frames every request passes through: they say nothing about where the time goes
_PLUMBING = ("run_forever", "_run_once", "_run (asyncio", "run (uvloop", "__call__ (", "app (", "handle (",
             "run_until_complete", "wrapped_app", "run_asgi", "<module>", "main (", "run_service", "serve (",
             "_bootstrap", "run (threading", "worker (concurrent", "run (concurrent", "call_next", "dispatch (",
             "wrap (", "coro (", "run_endpoint_function", "_serve", "startup (", "run (asyncio", "run (uvicorn",
             "(typer/", "(click/", "<frozen runpy>", "Queue.get (queue", "Condition.wait (threading",
             "WorkerThread.run (anyio", "app_with_tls (", "_handle_selected (fastapi", "main (cmglab")


def available() -> bool:
    return shutil.which("py-spy") is not None


def sample(pid: int, seconds: float, rate: int = 200) -> Counter[str]:
    """Collapsed stacks of `pid` for `seconds` (py-spy raw format: "f1;f2;...;leaf count")."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                        "--rate", str(rate), "--format", "raw", "--nolineno", "--nonblocking", "--output", str(out)],
                       check=True, capture_output=True, timeout=seconds + 30)
        stacks: Counter[str] = Counter()
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
        return stacks


def top_frames(stacks: Counter[str], n: int = 8) -> list[dict[str, Any]]:
    total = sum(stacks.values()) or 1
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    ranked = [f for f, _ in incl.most_common() if not any(p in f for p in _PLUMBING)]
    return [{"frame": f, "total_pct": round(100 * incl[f] / total, 1),
             "self_pct": round(100 * self_counts[f] / total, 1)} for f in ranked[:n]]
