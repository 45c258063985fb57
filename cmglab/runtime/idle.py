"""Smaller stand-ins for what uvicorn and asyncio keep per connection, for listeners that hold thousands of idle
keep-alive connections (a CMG instance: 6,000 and more; issue 20: memory per idle connection).

- `LeanFlowControl`: uvicorn's FlowControl makes an asyncio.Event (with a deque of 64 slots, ~0.8 KB) for every
  connection; this one makes it only while writing is paused (the peer reads slower than the reply is written).
- `Pipeline`: uvicorn's httptools protocol keeps a deque (~0.7 KB) for pipelined requests; a list does the same
  (appendleft, pop, truth) in 56 bytes when empty, which it almost always is.
- `Deadlines`: the head and idle timeouts of every connection by slots of time, one loop timer per slot instead of
  a TimerHandle per connection (~1.6 KB each while a connection is idle). A deadline is rounded up to its slot's
  end: never early, late by at most 1/128 of the timeout and never more than a second.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Protocol

from uvicorn.protocols.http.flow_control import FlowControl

log = logging.getLogger("cmglab.idle")


class LeanFlowControl(FlowControl):
    def __init__(self, transport: asyncio.Transport) -> None:  # no super().__init__: it makes the Event
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._writable: asyncio.Event | None = None  # set while writing is paused

    async def drain(self) -> None:
        event = self._writable
        if event is not None:
            await event.wait()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            self._writable = asyncio.Event()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            event, self._writable = self._writable, None
            if event is not None:
                event.set()  # wakes every drain waiting on it


class Pipeline(list[Any]):
    """uvicorn's pipeline of waiting (cycle, app) pairs: appendleft, pop from the other end, truth."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class Expiring(Protocol):
    def timed_out(self) -> None: ...


_Key = tuple[asyncio.AbstractEventLoop, float, int]


class Slot(set[Expiring]):
    """The owners whose deadline falls in one slot of time."""

    __slots__ = ("key",)

    def __init__(self, key: _Key) -> None:
        super().__init__()
        self.key = key


class Deadlines:
    """One loop timer per slot of time for all the deadlines that fall in it (a slot's key holds its loop); one
    per listener (runtime/server.py), so a stopped listener's go with it. `arm` returns the owner's slot, which the
    owner keeps to `disarm`. A head timeout armed and disarmed for every request reuses its slot's timer: at most
    SLOTS_PER_TIMEOUT + 1 timers per timeout are pending, however many requests there are."""

    SLOTS_PER_TIMEOUT = 128
    MAX_LATENESS = 1.0  # seconds

    def __init__(self) -> None:
        self._slots: dict[_Key, Slot] = {}

    def arm(self, owner: Expiring, loop: asyncio.AbstractEventLoop, delay: float) -> Slot:
        step = min(self.MAX_LATENESS, delay / self.SLOTS_PER_TIMEOUT)
        n = math.ceil((loop.time() + delay) / step)
        key = (loop, step, n)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = Slot(key)
            loop.call_at(n * step, self._expire, key)
        slot.add(owner)
        return slot

    @staticmethod
    def disarm(owner: Expiring, slot: Slot) -> None:
        slot.discard(owner)  # an emptied slot stays until its timer fires: one timer per slot, never more

    def _expire(self, key: _Key) -> None:
        slot = self._slots.pop(key, None)
        while slot:
            owner = slot.pop()
            try:
                owner.timed_out()
            except Exception:  # one owner's failure must not leave the rest of its slot (popped) never timed out
                log.exception("a connection's timeout failed; the other deadlines of its slot still fire")

    def pending(self) -> int:
        """Slots whose timer has not fired yet (tests)."""
        return len(self._slots)
