"""Listening sockets without port races.

A port picked by binding and closing a socket is free only until someone else binds it: under load another
process took such ports between the pick and the service's start ("address already in use" in CI). So a port is
*reserved* instead: `reserve_ports` binds placeholder sockets (kernel-chosen ports, SO_REUSEPORT, never
listening) and keeps them for the life of the process. Only sockets of the same user that also set SO_REUSEPORT
can bind a reserved port, and nothing in the lab does that except `handover_sockets`, which makes a fresh socket
on each reserved port for a service about to start. The service inherits it (`CMGLAB_LISTEN_FDS`) or, in the
same process, finds it through `claim` — and listens on it. When the service stops, its socket closes and
clients are refused as they should be, while the placeholder still holds the port for a restart.

A service that was handed nothing binds its port itself (`bind_listener`); a clash is a `PortInUse`, which
names the port and the service.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

PORT_IN_USE_EXIT = 98  # EADDRINUSE: the exit code of a service whose port is taken (its one line says which)
FDS_ENV = "CMGLAB_LISTEN_FDS"  # "HOST:PORT=FD,HOST:PORT=FD": sockets handed over by the parent process

_placeholders: dict[tuple[str, int], socket.socket] = {}
_lock = threading.Lock()


class PortInUse(OSError):
    def __init__(self, host: str, port: int, service: str) -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} is in use")
        self.host, self.port, self.service = host, port, service

    def __str__(self) -> str:
        return (
            f"{self.service}: port {self.port} on {self.host} is already in use by another process. "
            f"Stop what holds it (another lab: cmglab down --lab DIR), or give this lab free ports "
            f"(cmglab init --free-ports)."
        )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _reuseport_socket(host: str, port: int) -> socket.socket:
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
    except BaseException:
        s.close()
        raise
    return s


def reserve_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """N ports nobody else can take, held until this process exits. Only cmglab services (started by
    `LabProcesses` or in this process through `serve`) can listen on them: hand a third-party program a
    port from `free_port_now` instead."""
    socks = [_reuseport_socket(host, 0) for _ in range(n)]
    ports = [s.getsockname()[1] for s in socks]
    with _lock:
        for port, s in zip(ports, socks, strict=True):
            _placeholders[(host, port)] = s
    return ports


def reserved(host: str, port: int) -> bool:
    with _lock:
        return (host, port) in _placeholders


def claim(host: str, port: int) -> socket.socket | None:
    """A fresh socket on a port this process reserved (None if it did not)."""
    if not reserved(host, port):
        return None
    return _reuseport_socket(host, port)


@contextlib.contextmanager
def handover(host: str) -> Iterator[tuple[dict[str, str], list[int]]]:
    """Fresh sockets on every port this process reserved on HOST, for a child process started inside the
    block: its environment entry and the fds to pass (`pass_fds`). Ours are closed when the block ends (the
    child has its own copies; ours would keep a stopped service's port listening)."""
    with _lock:
        ports = [p for (h, p) in _placeholders if h == host]
    socks = [_reuseport_socket(host, p) for p in ports]
    try:
        spec = ",".join(f"{host}:{s.getsockname()[1]}={s.fileno()}" for s in socks)
        yield ({FDS_ENV: spec} if socks else {}), [s.fileno() for s in socks]
    finally:
        for s in socks:
            s.close()


def adopt_inherited() -> None:
    """Hold the sockets this process was handed as reservations of its own, to hand on to the services it
    starts (`cmglab up` run by a test or tool that reserved the lab's ports)."""
    with _lock:
        for where, s in inherited_sockets().items():
            _placeholders.setdefault(where, s)


def inherited_sockets() -> dict[tuple[str, int], socket.socket]:
    """The sockets this process was handed (`CMGLAB_LISTEN_FDS`), by (host, port); read once, then the
    variable is removed so that our own children do not take the numbers for theirs."""
    spec = os.environ.pop(FDS_ENV, "")
    found: dict[tuple[str, int], socket.socket] = {}
    for item in filter(None, spec.split(",")):
        where, _, fd = item.rpartition("=")
        host, _, port = where.rpartition(":")
        try:
            found[(host, int(port))] = socket.socket(fileno=int(fd))
        except (OSError, ValueError):  # a stale entry: the service binds the port itself
            continue
    return found


def bind_listener(host: str, port: int, service: str) -> socket.socket:
    """Bind as uvicorn would (SO_REUSEADDR, no SO_REUSEPORT: a second lab on the same port must fail)."""
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(host, port, service) from None
        raise
    return s


_locks: list[int] = []


def bind_shared(host: str, port: int, service: str) -> socket.socket:
    """For a service with several workers, each on a socket of its own (SO_REUSEPORT: the kernel spreads the
    connections over them; one shared socket gave one worker all 16 of 16). SO_REUSEPORT would also let a
    second lab with workers on the same port join silently, so a lock file per port stands in for the
    exclusive bind: held by this process while it lives."""
    lock_dir = Path(tempfile.gettempdir()) / f"cmglab-ports-{os.getuid()}"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(lock_dir / f"{host.replace(':', '_')}-{port}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        s = _reuseport_socket(host, port)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EADDRINUSE, errno.EWOULDBLOCK):
            raise PortInUse(host, port, service) from None
        raise
    _locks.append(fd)
    return s


def sibling(sock: socket.socket) -> socket.socket:
    """Another socket on SOCK's address for a worker: its own (SO_REUSEPORT) when SOCK allows it, else SOCK."""
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        return sock
    host, port = sock.getsockname()[:2]
    return _reuseport_socket(host, port)


def free_port_now(host: str = "127.0.0.1") -> int:
    """A port that is free at this moment (bind and close): only for third-party programs that bind
    themselves. Racy by nature; cmglab's own services take `reserve_ports`."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
