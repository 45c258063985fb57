"""The bench's CPU meter reads another process's CPU time to well under a millisecond (issue 20).

It read /proc/<pid>/stat's clock ticks (10 ms): a through-CMG row that stalled on a loaded host and served 4
requests (~8 ms of the services' CPU) read 0 ms per request, and the bench smoke test's `server_cpu_ms > 0`
failed. Here a child spends a known few milliseconds of CPU between the meter's two reads.
"""

from __future__ import annotations

import os
import subprocess
import sys

from cmglab.tools.bench.pinned import CpuMeter

# the child waits for a line, spends BURN_S of its own CPU time, says how much it spent, and waits again
_CHILD = """
import sys, time
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < float(sys.argv[1]):
    pass
sys.stdout.write(f"{time.process_time() - start}\\n"); sys.stdout.flush()
sys.stdin.readline()
"""
BURN_S = 0.003


def test_a_few_milliseconds_of_another_process_are_measured() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(BURN_S)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        meter = CpuMeter({"child": child.pid})
        child.stdin.write("go\n")
        child.stdin.flush()
        spent = float(child.stdout.readline())  # the child has burnt its CPU and is blocked on stdin again
        measured = meter.seconds()["child"]
        ms = meter.per_request(1)["child"]
    finally:
        child.kill()
        child.wait()
    # the burn, plus the child's own reads and writes around it: never a whole 10 ms clock tick, never 0
    assert spent <= measured <= spent + 0.002, (spent, measured)
    assert ms > 0


def _started(burn: float, cpu: int) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(burn)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    os.sched_setaffinity(child.pid, {cpu})
    return child


def test_the_time_a_process_waits_for_its_cpu_is_measured() -> None:
    """Two processes that each want 50 ms of one CPU at once: one of them waits while the other runs (the wait a
    stalled bench row's services show when the host's other load holds their CPU)."""
    cpu = max(os.sched_getaffinity(0))  # the benches pin their services to the first CPU: the other is quieter
    children = [_started(0.05, cpu), _started(0.05, cpu)]
    try:
        meter = CpuMeter({str(i): c.pid for i, c in enumerate(children)})
        for c in children:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        spent = [float(c.stdout.readline()) for c in children if c.stdout is not None]
        waited = meter.waited()
    finally:
        for c in children:
            c.kill()
            c.wait()
    assert min(spent) >= 0.05
    assert sum(waited.values()) >= 0.025, waited  # one CPU for both: together they waited at least half a burn
