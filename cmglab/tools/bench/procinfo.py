"""What the benchmarks read from /proc: a process's CPU time, resident and peak resident memory."""

from __future__ import annotations

import os
import resource
import time


def _cpu_clock(pid: int) -> int:
    """Linux's CPU-time clock of process `pid` (all its threads, those that ended too): CPUCLOCK_SCHED of the
    process, the clock id clock_getcpuclockid(3) returns (its kernel encoding, as glibc makes it)."""
    return ((~pid) << 3) | 2


def cpu_seconds(pid: int) -> float:
    """The CPU time `pid` has used, to the nanosecond. /proc/<pid>/stat's utime + stime count whole clock ticks
    (10 ms): a row that served a few requests (a stalled one on a loaded host: 4 requests, ~8 ms of CPU) read as
    0 ms, or 10, per request and failed the bench smoke test's `server_cpu_ms > 0` (issue 20)."""
    try:
        return time.clock_gettime(_cpu_clock(pid))
    except OSError:  # not Linux, or the process is gone: the tick count (which fails the same way when gone)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_queue_wait_seconds(pid: int) -> float:
    """How long `pid`'s live threads have been runnable but not running (/proc/<pid>/task/*/schedstat, field 2;
    0 where the kernel keeps no scheduler statistics): a process the host's other load kept off its CPU."""
    waited = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                waited += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):  # the thread ended meanwhile, or no schedstat
            continue
    return waited / 1e9


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


def nr_open() -> int:
    """The kernel's ceiling for a process's open-files limit (/proc/sys/fs/nr_open)."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def lift_nofile(want: int = 0) -> int:
    """The open-files limit for thousands of sockets (the services started afterwards inherit it): soft and hard
    raised to `want` (at most nr_open) where this process may raise its hard limit (root with CAP_SYS_RESOURCE),
    else the soft limit up to the hard one. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, nr_open() or want)
    if target > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):  # not allowed here: the hard limit stands
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
