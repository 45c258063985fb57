"""runtime/offload.py: the hop that runs a request's work (crypto, database) on a service's worker threads and
resumes the caller on the event loop with what the work gave (its result or its exception, with the caller's context
variables), never on the loop's own thread; at most its threads at once, the rest waiting their turn; a caller
cancelled before its work started does not start it (one cancelled while its work runs: test_mp_cancelled_work)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import threading
import time
import types
import weakref

import pytest

from cmglab.runtime import offload
from cmglab.runtime.offload import Offload
from tests.support.waits import WAIT

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
who_span: contextvars.ContextVar[object] = contextvars.ContextVar("who_span")


def test_the_work_runs_off_the_loop_with_the_callers_context_and_gives_its_result_or_its_exception() -> None:
    pool = Offload("t-work")

    def work(a: int, b: int) -> tuple[int, str, int]:
        return a + b, who.get(), threading.get_ident()

    def fails() -> None:
        raise KeyError("no such row")

    async def main() -> None:
        who.set("caller")
        total, seen, thread = await pool.run(work, 2, 3)
        assert (total, seen) == (5, "caller")
        assert thread != threading.get_ident()  # not the loop's thread
        with pytest.raises(KeyError, match="no such row"):
            await pool.run(fails)
        assert (await pool.run(work, 1, 1))[0] == 2  # a thread that raised serves on

    asyncio.run(main())
    pool.shutdown()


def test_no_more_threads_than_the_pool_has_and_queued_work_runs_in_its_turn() -> None:
    pool = Offload("t-work", max_threads=2)
    running, most, lock = 0, 0, threading.Lock()
    release = threading.Event()

    def work(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        assert release.wait(WAIT)
        with lock:
            running -= 1
        return n

    async def main() -> list[int]:
        tasks = [asyncio.ensure_future(pool.run(work, n)) for n in range(6)]
        await asyncio.sleep(0)
        release.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    assert asyncio.run(main()) == list(range(6))
    assert most <= 2 and len(pool.threads) == 2
    pool.shutdown()


def test_work_whose_caller_was_cancelled_before_it_started_is_not_started() -> None:
    pool = Offload("t-work", max_threads=1)
    busy, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        busy.set()
        assert release.wait(WAIT)
        ran.append("hold")

    async def main() -> None:
        first = asyncio.ensure_future(pool.run(hold))
        assert await asyncio.to_thread(busy.wait, WAIT)
        queued = asyncio.ensure_future(pool.run(ran.append, "queued"))  # the only thread is busy: it waits
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await asyncio.wait_for(first, WAIT)
        assert await pool.run(len, "after") == 5  # the thread went past the cancelled item to this one

    asyncio.run(main())
    assert ran == ["hold"]
    pool.shutdown()


def test_shutdown_waits_for_the_work_under_way_and_refuses_more() -> None:
    pool = Offload("t-work")
    started, go_on = threading.Event(), threading.Event()
    finished: list[str] = []

    def work() -> None:
        started.set()
        assert go_on.wait(WAIT)
        finished.append("work")

    async def main() -> None:
        task = asyncio.ensure_future(pool.run(work))
        assert await asyncio.to_thread(started.wait, WAIT)
        stopping = threading.Thread(target=pool.shutdown)
        stopping.start()
        deadline = time.monotonic() + WAIT
        while not pool.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pool.closed and stopping.is_alive()  # it waits for the work under way
        with pytest.raises(RuntimeError, match="shut down"):
            await pool.run(len, "x")
        go_on.set()
        await asyncio.to_thread(stopping.join, WAIT)
        assert not stopping.is_alive() and finished == ["work"]
        await asyncio.wait_for(task, WAIT)

    asyncio.run(main())


def test_an_idle_thread_keeps_nothing_of_the_work_it_ran() -> None:
    """What a request handed its thread (its form with a password, its context variables) is let go when the work
    is done, not kept until the thread's next work."""
    pool = Offload("t-work", max_threads=1)

    class Form(dict[str, str]):
        pass

    form, span = Form(password="Passw0rd!lab"), Form(request="the caller's")
    gone = weakref.ref(form), weakref.ref(span)

    async def main(form: Form, span: Form) -> int:
        who_span.set(span)
        return await pool.run(len, form)

    assert asyncio.run(main(form, span)) == 1
    del form, span
    gc.collect()
    assert [ref() for ref in gone] == [None, None] and len(pool.threads) == 1


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux's SCHED_BATCH")
def test_the_workers_do_not_preempt_the_loop_when_woken_and_the_loop_keeps_its_own_policy() -> None:
    pool = Offload("t-work")
    before = os.sched_getscheduler(0)

    async def main() -> tuple[int, int]:
        return await pool.run(os.sched_getscheduler, 0), os.sched_getscheduler(0)

    worker, loop = asyncio.run(main())
    assert worker == os.SCHED_BATCH
    assert loop == before  # the caller's thread as it was
    pool.shutdown()


def test_a_thread_that_cannot_start_fails_its_caller_and_the_pool_serves_on(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Offload("t-work")
    start = threading.Thread.start

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def main() -> None:
        monkeypatch.setattr(threading.Thread, "start", refused)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await pool.run(len, "x")
        assert pool.threads == []  # the thread that never started holds no place
        monkeypatch.setattr(threading.Thread, "start", start)
        assert await asyncio.wait_for(pool.run(len, "xy"), WAIT) == 2

    asyncio.run(main())
    pool.shutdown()


def test_work_beyond_the_awake_threads_waits_for_one_of_them_and_wakes_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `awake` threads running, new work is queued and the first thread to finish takes it without sleeping
    (no other thread woken, none started); STALL made long here so that only that way is left."""
    monkeypatch.setattr(offload, "STALL", 10 * WAIT)
    pool = Offload("t-work", max_threads=8, awake=1)
    started, release = threading.Event(), threading.Event()

    def first() -> str:
        started.set()
        assert release.wait(WAIT)
        return threading.current_thread().name

    async def main() -> list[str]:
        tasks = [asyncio.ensure_future(pool.run(first))]
        await asyncio.to_thread(started.wait, WAIT)
        tasks += [asyncio.ensure_future(pool.run(lambda: threading.current_thread().name)) for _ in range(4)]
        await asyncio.sleep(0)
        assert len(pool.backlog) == 4 and pool.busy == 1
        release.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    names = asyncio.run(main())
    assert len(set(names)) == 1 and len(pool.threads) == 1 and pool.busy == 0
    pool.shutdown()


def test_work_queued_behind_stuck_awake_threads_gets_a_thread_of_its_own() -> None:
    """The awake threads waiting on a lock or a database (here an event) hold queued work up for STALL only."""
    pool = Offload("t-work", max_threads=8, awake=2)
    running, release = threading.Semaphore(0), threading.Event()

    def stuck() -> None:
        running.release()
        assert release.wait(WAIT)

    async def main() -> int:
        stuck_ones = [asyncio.ensure_future(pool.run(stuck)) for _ in range(2)]
        for _ in range(2):
            assert await asyncio.to_thread(running.acquire, True, WAIT)
        answer = await asyncio.wait_for(pool.run(len, "abc"), WAIT)  # queued, then a thread of its own
        assert not release.is_set() and len(pool.threads) == 3
        release.set()
        await asyncio.wait_for(asyncio.gather(*stuck_ones), WAIT)
        return answer

    assert asyncio.run(main()) == 3
    pool.shutdown()


class StuckPool:
    """A pool of one awake thread (of 8) and work (`stuck`) that holds its thread until `release` is set; on leaving
    the block, also on failure, the thread is released and the pool shut down."""

    def __init__(self) -> None:
        self.pool = Offload("t-work", max_threads=8, awake=1)
        self.running, self.release = threading.Event(), threading.Event()

    def stuck(self) -> None:
        self.running.set()
        assert self.release.wait(WAIT)

    def __enter__(self) -> StuckPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.pool.shutdown()


def test_work_whose_own_thread_could_not_start_is_tried_again_while_the_awake_ones_are_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Work queued behind a stuck awake thread whose thread of its own was refused (the process' thread limit) is
    not left to the stuck one: the stall check is tried again, and the work runs once a thread can be had."""
    start = threading.Thread.start
    refused: list[str] = []

    def refused_once(self: threading.Thread) -> None:
        if not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        start(self)

    async def main(held: StuckPool) -> int:
        first = asyncio.ensure_future(held.pool.run(held.stuck))
        assert await asyncio.to_thread(held.running.wait, WAIT)
        monkeypatch.setattr(threading.Thread, "start", refused_once)
        answer = await asyncio.wait_for(held.pool.run(len, "abc"), WAIT)
        assert refused == ["t-work_1"] and not held.release.is_set()
        held.release.set()
        await asyncio.wait_for(first, WAIT)
        return answer

    with StuckPool() as held:
        assert asyncio.run(main(held)) == 3


def test_the_stall_check_stays_on_its_own_loop_when_the_next_work_is_a_closed_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Work queued from two event loops: the stall check that runs on the first is armed again on that loop, not on
    the loop of the work next in line, which here is closed (or would be run by another thread): the stalled work
    gets its thread. The other loop's work is queued later by a clock of the test's (no waiting on the real one)."""
    clock, home = [0.0], threading.get_ident()
    monkeypatch.setattr(
        offload, "time", types.SimpleNamespace(monotonic=lambda: clock[0] if threading.get_ident() == home else 1.0)
    )

    async def queue_then_close(pool: Offload) -> None:  # the other loop: its work queued (at 1.0), then closed
        left = asyncio.ensure_future(pool.run(len, "other"))
        await asyncio.sleep(0)
        assert not left.done()  # cancelled as its loop ends

    async def main(held: StuckPool) -> int:
        first = asyncio.ensure_future(held.pool.run(held.stuck))
        assert await asyncio.to_thread(held.running.wait, WAIT)
        queued = asyncio.ensure_future(held.pool.run(len, "abc"))  # at 0.0: a stall check on this loop
        await asyncio.sleep(0)
        await asyncio.to_thread(asyncio.run, queue_then_close(held.pool))
        assert len(held.pool.backlog) == 2
        clock[0] = 1.0  # this loop's work has waited past STALL, the other loop's not
        answer = await asyncio.wait_for(queued, WAIT)
        held.release.set()
        await asyncio.wait_for(first, WAIT)
        return answer

    with StuckPool() as held:
        assert asyncio.run(main(held)) == 3


def test_the_services_run_one_work_at_once_per_cpu_and_at_least_four(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MP's and Entra's pools let one thread per CPU of the process run at once (at least 4) of their 40."""
    from cmglab.services.entra import parts
    from cmglab.services.management_point import transport

    for pool in (transport.mp_work, parts.entra_work):
        assert pool.awake_of is offload.awake_for_cpus and pool.max_threads == 40
    monkeypatch.setattr(offload.os, "sched_getaffinity", lambda pid: set(range(2)))
    assert offload.awake_for_cpus() == 4
    monkeypatch.setattr(offload.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert offload.awake_for_cpus() == 16


def test_a_pool_awake_for_the_cpus_counts_them_when_it_starts_its_first_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service's pools are made when it is imported, its worker pinned to one CPU after (runtime/workers.py
    pin_to, before it serves): on a 16-CPU machine a pinned worker lets 4 of its threads run at once, not 16."""
    cpus = set(range(16))
    monkeypatch.setattr(offload.os, "sched_getaffinity", lambda pid: cpus)
    pool = Offload("t-work", awake=offload.awake_for_cpus)
    cpus = {3}  # the worker pinned

    async def main() -> int:
        return await pool.run(len, "abc")

    assert asyncio.run(main()) == 3
    assert pool.awake == 4
    cpus = set(range(16))  # counted once, not per thread
    assert asyncio.run(main()) == 3 and pool.awake == 4
    pool.shutdown()
