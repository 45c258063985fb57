"""The per-connection stand-ins of runtime/idle.py (issue 20: memory per idle keep-alive connection): deadlines by
slots of time are never early and share a timer, a disarmed one never fires; flow control makes its event only
while writing is paused; the pipeline keeps uvicorn's order. The listeners that use them are exercised on real
sockets by test_listener_limits.py (idle, head and trickle timeouts) and test_any_method_protocol.py (pipelining)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from cmglab.runtime.idle import Deadlines, LeanFlowControl, Pipeline


class Owner:
    def __init__(self, loop: asyncio.AbstractEventLoop, done: asyncio.Event, expected: int, fired: list[Any]) -> None:
        self.loop, self.done, self.expected, self.fired = loop, done, expected, fired
        self.armed_at = loop.time()

    def timed_out(self) -> None:
        self.fired.append((self, self.loop.time()))
        if len(self.fired) == self.expected:
            self.done.set()


@contextlib.contextmanager
def clock_stopped(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """LOOP's clock stands still inside (nothing awaits there): what is armed there is armed at one instant. Real
    time would pass a slot's width (2.3 ms for 0.3 s) whenever a loaded machine descheduled the thread, and
    spread the owners over more slots than the test means."""
    now = loop.time()
    loop.time = lambda: now  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.time


def test_deadlines_are_never_early_share_a_timer_and_a_disarmed_one_never_fires() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines, done = Deadlines(), asyncio.Event()
        fired: list[tuple[Owner, float]] = []
        delay = 0.3
        with clock_stopped(loop):  # armed at one instant: one slot, one timer (not 100)
            owners = [Owner(loop, done, 99, fired) for _ in range(100)]
            slots = [deadlines.arm(o, loop, delay) for o in owners]
        assert deadlines.pending() == 1 and all(slot is slots[0] for slot in slots)
        deadlines.disarm(owners[0], slots[0])
        await asyncio.wait_for(done.wait(), 30)
        assert owners[0] not in {o for o, _ in fired} and len(fired) == 99
        # never early (within the loop timers' own millisecond precision)
        assert all(at >= o.armed_at + delay - 0.002 for o, at in fired)
        assert deadlines.pending() == 0

        lone, again = Owner(loop, asyncio.Event(), 1, []), Owner(loop, asyncio.Event(), 1, [])
        deadlines.disarm(lone, deadlines.arm(lone, loop, 0.05))
        deadlines.disarm(again, deadlines.arm(again, loop, 0.05))  # a request's head timeout, armed and disarmed
        assert deadlines.pending() <= 2  # the emptied slot waits for its one timer: none added per arming
        while deadlines.pending():
            await asyncio.sleep(0.02)
        assert lone.fired == again.fired == []

    asyncio.run(scenario())


class _Raising:
    """An owner whose timeout fails; hash 0, so that its slot (a set) hands it out first (CPython's set.pop)."""

    def __hash__(self) -> int:
        return 0

    def timed_out(self) -> None:
        raise RuntimeError("this owner's timeout fails")


class _Ordinary(Owner):
    def __hash__(self) -> int:
        return 1


def test_an_owner_whose_timeout_raises_leaves_the_rest_of_its_slot_timing_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One owner raising in timed_out() once ended its slot's loop: the others, already taken out of the popped
    slot, never timed out (a connection's half-sent head could then hold it for ever). Each owner's timeout is
    now its own: the failure is logged and the rest of the slot still times out."""

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        deadlines, done = Deadlines(), asyncio.Event()
        fired: list[tuple[Owner, float]] = []
        raising, ordinary = _Raising(), _Ordinary(loop, done, 1, fired)
        with clock_stopped(loop):  # armed at one instant (a slot is 0.4 ms wide here): one slot
            first, second = deadlines.arm(raising, loop, 0.05), deadlines.arm(ordinary, loop, 0.05)
        assert first is second  # one slot: the case the loop over a slot's owners must survive
        await asyncio.wait_for(done.wait(), 10)  # generous for a loaded machine; never reached when it works
        return fired

    with caplog.at_level(logging.ERROR, logger="cmglab.idle"):
        fired = asyncio.run(scenario())
    assert [o for o, _ in fired] and isinstance(fired[0][0], _Ordinary)
    assert any("this owner's timeout fails" in (r.exc_text or "") for r in caplog.records)


class _Transport:
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_flow_control_makes_its_event_only_while_writing_is_paused() -> None:
    async def scenario() -> None:
        flow = LeanFlowControl(_Transport())  # type: ignore[arg-type]
        await asyncio.wait_for(flow.drain(), 5)  # writable: returns at once
        assert flow._writable is None
        flow.pause_writing()
        assert flow.write_paused and flow._writable is not None
        waiting = asyncio.create_task(flow.drain())
        await asyncio.sleep(0)
        assert not waiting.done()
        flow.resume_writing()
        await asyncio.wait_for(waiting, 5)
        assert not flow.write_paused and flow._writable is None

    asyncio.run(scenario())


def test_the_pipeline_keeps_uvicorns_order() -> None:
    ours, theirs = Pipeline(), deque[int]()
    for i in range(5):
        ours.appendleft(i)
        theirs.appendleft(i)
    assert bool(ours) and [ours.pop() for _ in range(5)] == [theirs.pop() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert not ours
