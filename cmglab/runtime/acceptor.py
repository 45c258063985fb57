"""Accepting connections with a budget, instead of `loop.create_server`.

`create_server` accepts everything and gives a TLS handshake 60 s: 21,000 connections that never sent a
ClientHello once took all of a CMG's descriptors (every client then failed), and their memory was never given
back. Here each listener accepts in its own loop, and per process:

- at most `max_connections` connections are open (handshaking or established, all listeners together); past
  that the oldest connection still in its TLS handshake is dropped for the newcomer, and when every open one has
  completed its handshake the newcomer is closed at once, so the process keeps descriptors for its database, logs
  and upstream calls;
- at most `max_handshakes` of them are still in their TLS handshake; when that many wait, the oldest is dropped
  for the newcomer: a real client finishes its handshake in milliseconds, a connection that sends nothing is
  the one that waits, so a flood of them cannot lock real clients out;
- a handshake must finish within `handshake_timeout`;
- a second after a burst of handshakes ends, reference cycles are collected and the C allocator is asked to
  give freed memory back to the system (glibc keeps OpenSSL's per-connection buffers in its arenas otherwise:
  RSS stayed at 2.3 GiB after such a storm).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cmglab.acceptor")

TRIM_AFTER = 64  # handshakes since the last trim that make a burst worth trimming after


def _malloc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:  # not glibc
        return lambda: None
    return lambda: trim(0)


@dataclass
class Budget:
    """What one process allows across its listeners."""

    max_connections: int = 20_000
    max_handshakes: int = 1_000
    handshake_timeout: float = 10.0
    established: list[Collection[Any]] = field(default_factory=list)  # each listener's open connections
    handshaking: OrderedDict[asyncio.Task[None], None] = field(default_factory=OrderedDict)
    refused: int = 0
    dropped: int = 0
    since_trim: int = 0
    _trim: Callable[[], None] = field(default_factory=_malloc_trim)
    _trim_handle: asyncio.TimerHandle | None = None
    _last_refusal_log: float = 0.0

    def open_connections(self) -> int:
        return sum(len(c) for c in self.established) + len(self.handshaking)

    def make_room(self) -> bool:
        """At the cap, drop the oldest connection still in its TLS handshake for a newcomer (False: every open
        one has completed its handshake). Only completed handshakes hold a slot: sockets that never send a
        ClientHello cannot fill the budget and lock out a peer with a certificate (review 3, finding 1)."""
        if not self.handshaking:
            return False
        oldest, _ = self.handshaking.popitem(last=False)
        oldest.cancel()
        self.dropped += 1
        return True

    def refuse(self, conn: socket.socket, why: str) -> None:
        self.refused += 1
        conn.close()
        now = time.monotonic()
        if now - self._last_refusal_log > 10:
            self._last_refusal_log = now
            log.warning("refusing connections: %s (%d refused so far)", why, self.refused)

    def handshake_started(self, task: asyncio.Task[None]) -> None:
        while len(self.handshaking) >= self.max_handshakes:
            oldest, _ = self.handshaking.popitem(last=False)
            oldest.cancel()
            self.dropped += 1
        self.handshaking[task] = None
        self.since_trim += 1

    def handshake_ended(self, task: asyncio.Task[None]) -> None:
        self.handshaking.pop(task, None)
        if not self.handshaking and self.since_trim >= TRIM_AFTER:
            self._schedule_trim()

    def _schedule_trim(self) -> None:
        if self._trim_handle is None:
            self._trim_handle = asyncio.get_running_loop().call_later(1.0, self._trim_now)

    def _trim_now(self) -> None:
        self._trim_handle = None
        if self.handshaking:  # still under way: the last one to end schedules it again
            return
        self.since_trim = 0
        gc.collect()  # failed handshakes leave cycles (exception, traceback, transport) holding SSL buffers
        self._trim()


class Acceptor:
    """Serves one listening socket: what uvicorn's `Server.startup` would get from `loop.create_server`."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        budget: Budget,
        backlog: int,
        name: str,
    ) -> None:
        self.sock, self.factory, self.ssl = sock, protocol_factory, ssl_context
        self.budget, self.backlog, self.name = budget, backlog, name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self.sock.listen(self.backlog)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop(), name=f"accept:{self.name}")

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:  # EMFILE and the like: make room, breathe, go on
                log.warning("%s: accept failed: %s", self.name, e)
                if self.budget.handshaking:
                    next(iter(self.budget.handshaking)).cancel()
                await asyncio.sleep(0.05)
                continue
            if self.budget.open_connections() >= self.budget.max_connections and not self.budget.make_room():
                self.budget.refuse(conn, f"{self.budget.max_connections} connections open (max_connections)")
                continue
            if self.ssl is None:
                try:
                    await loop.connect_accepted_socket(self.factory, conn)
                except Exception as e:  # the peer already left, or worse: never let it end the accept loop
                    log.debug("%s: connection not set up: %s", self.name, e)
                    conn.close()
                continue
            task = loop.create_task(self._handshake(conn))
            self.budget.handshake_started(task)
            task.add_done_callback(self.budget.handshake_ended)

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self.factory, conn, ssl=self.ssl, ssl_handshake_timeout=self.budget.handshake_timeout
            )
        except asyncio.CancelledError:  # dropped for a newer one, or the listener stops
            with contextlib.suppress(OSError):
                conn.close()
        except Exception as e:  # timeouts, resets, TLS alerts: the connection is gone, the listener is not
            log.debug("%s: handshake did not complete: %s", self.name, e)
            with contextlib.suppress(OSError):
                conn.close()

    # what uvicorn calls on its servers at shutdown
    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
