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

from cmglab.runtime import sockets

log = logging.getLogger("cmglab.workers")

MULTI_WORKER = frozenset({"entra", "management-point", "pki"})
WORKER_OF_ENV = "CMGLAB_WORKER_OF"  # set in workers 1..N-1: the first process' pid
WORKER_INDEX_ENV = "CMGLAB_WORKER_INDEX"
PR_SET_PDEATHSIG = 1


def effective_workers(service: str, wanted: int) -> int:
    if wanted > 1 and service not in MULTI_WORKER:
        log.warning("%s keeps its state in one process: running 1 worker, not %d", service, wanted)
        return 1
    return max(1, wanted)


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


def start_workers(count: int, socks: Sequence[socket.socket], argv: Sequence[str]) -> list[subprocess.Popen[bytes]]:
    """Workers 1..count, each `python ARGV` handed a socket of its own on each of SOCKS' addresses."""
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
