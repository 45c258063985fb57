"""Sampling profiles of running services (py-spy, attached by PID; needs ptrace: root or
CAP_SYS_PTRACE) while the load generator drives one scenario: which frames the time goes to.

Frames are counted on the busy samples only: a sample whose leaf is an idle event loop or a worker
thread waiting for work is left out. `self` is the share of busy samples where the frame is the leaf,
`total` the share where it is anywhere on the stack. py-spy samples wall-clock time: a process that is
runnable but waiting for the CPU (the services share one core) counts where it was preempted, which
inflates system calls that wake another process (a socket send on loopback).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

# frames every request passes through: they say nothing about where the time goes
_PLUMBING = (
    "run_forever",
    "_run_once",
    "_run (asyncio",
    "run (uvloop",
    "__call__ (",
    "app (",
    "handle (",
    "run_until_complete",
    "wrapped_app",
    "run_asgi",
    "<module>",
    "main (",
    "run_service",
    "serve (",
    "_bootstrap",
    "run (threading",
    "worker (concurrent",
    "run (concurrent",
    "call_next",
    "dispatch (",
    "wrap (",
    "coro (",
    "run_endpoint_function",
    "_serve",
    "startup (",
    "run (asyncio",
    "run (uvicorn",
    "(typer/",
    "(click/",
    "<frozen runpy>",
    "Queue.get (queue",
    "Condition.wait (threading",
    "WorkerThread.run (anyio",
    "app_with_connection (",
    "_handle_selected (fastapi",
    "main (cmglab",
    "Runner.run (asyncio",
    "run_sync_in_worker_thread (anyio",
    "run_in_threadpool (starlette",
)
# leaves of a process with nothing to do: the event loop in C (uvloop) or a thread waiting for work
_IDLE = (
    "Runner.run (asyncio",
    "run_forever (asyncio",
    "WorkerThread.run (anyio",
    "Condition.wait (threading",
    "wait (threading",
    "select (selectors",
    "_worker (concurrent",
    "_Worker.loop (cmglab/runtime/offload",  # the services' own request threads, waiting for their next item
    "WriteLock.acquire (cmglab/runtime/sqlite_writes",  # a request thread waiting for its turn to write (SQLite)
)


def available() -> bool:
    return shutil.which("py-spy") is not None


class Sampler:
    """py-spy recording several processes at once, for `seconds`, in the background."""

    def __init__(self, service_pids: dict[str, int], seconds: float, rate: int = 200) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cmglab-pyspy-"))
        self.seconds = seconds
        self.procs = {
            name: subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, round(seconds))),
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--nolineno",
                    "--nonblocking",
                    "--output",
                    str(self.dir / f"{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for name, pid in service_pids.items()
        }

    def stacks(self) -> dict[str, Counter[str]]:
        """Wait for every recording; collapsed stacks per process ("f1;f2;...;leaf" -> samples)."""
        try:
            found = {}
            for name, proc in self.procs.items():
                _, err = proc.communicate(timeout=self.seconds + 30)
                if proc.returncode != 0:
                    raise RuntimeError(f"py-spy failed on {name}: {err.decode(errors='replace')[-500:]}")
                found[name] = parse((self.dir / f"{name}.txt").read_text())
            return found
        finally:
            self.stop()
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self) -> None:
        """Kill and reap every recording still running: one py-spy failed, or the section ran out of its budget
        while waiting, and the others must not outlive the section (nor be left as zombies)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass  # unkillable (uninterruptible sleep): nothing more to do from here
            if proc.stderr is not None:
                proc.stderr.close()


def parse(raw: str) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def busy(stacks: Counter[str]) -> Counter[str]:
    return Counter({s: n for s, n in stacks.items() if not s.rsplit(";", 1)[-1].startswith(_IDLE)})


def top_frames(stacks: Counter[str], n: int = 10, n_self: int = 5) -> list[dict[str, Any]]:
    """The `n` frames with the largest share of the busy samples (plumbing left out), then the `n_self`
    largest leaves not listed yet (where the time is spent, not just passed through)."""
    active = busy(stacks)
    total = sum(active.values()) or 1
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for stack, count in active.items():
        frames = stack.split(";")
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    ranked = [f for f, _ in incl.most_common() if not any(p in f for p in _PLUMBING)][:n]
    ranked += [f for f, _ in self_counts.most_common() if f not in ranked][:n_self]
    return [
        {"frame": f, "total_pct": round(100 * incl[f] / total, 1), "self_pct": round(100 * self_counts[f] / total, 1)}
        for f in ranked
    ]
