"""N worker processes on one listener (pre-forked socket): `cmglab serve entra --workers 2` / CMGLAB_WORKERS.

The first process binds the listening sockets (or takes the ones it was handed) with SO_REUSEPORT, starts
N-1 more copies of itself, each handed sockets of its own on the same addresses, and serves as worker 0: the
kernel spreads new connections over the workers' sockets. (One shared socket was tried first: whichever
process the kernel woke first took every connection, 16 of 16.) Stopping the first stops the others; if it is
killed outright the others get SIGTERM from the kernel (PR_SET_PDEATHSIG) and stop too.

Only services whose state lives in their database may run several workers (`MULTI_WORKER`): Entra and the MP
(and the CRL host, which serves files). The CMG and the connection point hold their channels in one process,
the console its live view. What stays per worker even there: the request recorder and fault injector
(`/_lab/requests`, `/_lab/faults`) and any in-memory cache a service keeps.

Several workers are each pinned to one CPU (`worker_cpus`, CMGLAB_PIN_WORKERS=0 / `--no-pin-workers`: not), their
event loop and pool threads with them: a worker's threads spread over CPUs hand the GIL across them (issue 20, on
this 2-CPU machine: two unpinned MP workers served location at 0.4-0.55 of pinned ones' rate, README "Why location
scales least"). One worker stays unpinned: its threads' GIL-released work (signatures, hashing) may use every CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cmglab.runtime import sockets

log = logging.getLogger("cmglab.workers")

MULTI_WORKER = frozenset({"entra", "management-point", "pki"})
WORKER_OF_ENV = "CMGLAB_WORKER_OF"  # set in workers 1..N-1: the first process' pid
WORKER_INDEX_ENV = "CMGLAB_WORKER_INDEX"
WORKER_CPU_ENV = "CMGLAB_WORKER_CPU"  # set in workers 1..N-1 when pinned: the CPU it pins itself to
PR_SET_PDEATHSIG = 1


def effective_workers(service: str, wanted: int) -> int:
    if wanted > 1 and service not in MULTI_WORKER:
        log.warning("%s keeps its state in one process: running 1 worker, not %d", service, wanted)
        return 1
    return max(1, wanted)


def worker_cpus(service: str, count: int) -> list[int] | None:
    """The CPU each of SERVICE's COUNT workers pins itself to, from this process's allowed CPUs (taken before any
    worker is pinned); None where the platform cannot pin. Each multi-worker service of a lab starts at an offset of
    its own, so that on a machine with enough CPUs Entra's and the MP's workers do not share cores."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    first = sorted(MULTI_WORKER).index(service) * count if service in MULTI_WORKER else 0
    return [allowed[(first + i) % len(allowed)] for i in range(count)]


def pin_to(cpu: int | None) -> None:
    """This process's threads on CPU (None: left as they are). The calling thread is pinned and every thread it
    starts later inherits that, so called before the service starts its threads (its pools start theirs as work
    comes); a thread already running is moved too (on Linux each is a task of /proc/self/task)."""
    if cpu is None:
        return
    tasks = Path("/proc/self/task")
    try:
        for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, {cpu})
    except OSError as e:  # a CPU taken away since it was chosen, a sandbox refusing: pinning only saves CPU time
        log.warning("worker %d not pinned to CPU %d (%s): it runs where the scheduler puts it", os.getpid(), cpu, e)
        return
    log.info("worker %d pinned to CPU %d", os.getpid(), cpu)


def handed_cpu() -> int | None:
    """In a worker 1..N-1: the CPU the first process chose for it, if pinned."""
    cpu = os.environ.get(WORKER_CPU_ENV)
    return int(cpu) if cpu else None


def die_with_parent() -> None:
    """In a worker: stop when the first process goes, however it goes."""
    parent = os.environ.get(WORKER_OF_ENV)
    if not parent:
        return
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        if name:
            ctypes.CDLL(name).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # it went before we asked
        raise SystemExit(0)


def start_workers(
    count: int, socks: Sequence[socket.socket], argv: Sequence[str], cpus: Sequence[int] | None = None
) -> list[subprocess.Popen[bytes]]:
    """Workers 1..count, each `python ARGV` handed a socket of its own on each of SOCKS' addresses (and with
    CPUS, `worker_cpus` of all the workers, the CPU it pins itself to)."""
    children = []
    for index in range(1, count + 1):
        own = [sockets.sibling(s) for s in socks]
        spec = ",".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}={s.fileno()}" for s in own)
        env = {
            **os.environ,
            sockets.FDS_ENV: spec,
            "CMGLAB_WORKERS": "1",
            WORKER_OF_ENV: str(os.getpid()),
            WORKER_INDEX_ENV: str(index),
            **({WORKER_CPU_ENV: str(cpus[index])} if cpus else {}),
        }
        try:
            children.append(
                subprocess.Popen(
                    [sys.executable, *argv], env=env, pass_fds=[s.fileno() for s in own], stdin=subprocess.DEVNULL
                )
            )
        finally:
            for mine, theirs in zip(socks, own, strict=True):
                if theirs is not mine:
                    theirs.close()
    return children


def stop_workers(children: Sequence[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    for c in children:
        try:
            c.wait(timeout)
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait(5)
