"""What the benchmarks read from /proc: a process's CPU time, resident and peak resident memory."""

from __future__ import annotations

import os
import resource


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return round(_status_kb(pid, "VmRSS") / 1024, 1)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the largest resident set the process has had."""
    return round(_status_kb(pid, "VmHWM") / 1024, 1)


def lift_nofile() -> int:
    """The soft open-files limit up to the hard one (thousands of sockets); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
