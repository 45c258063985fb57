"""A service's own worker threads for its request work (crypto, database), off the event loop.

`Offload.run(func, *args)` runs FUNC on one of the service's worker threads and resumes the caller on the event loop
with its result (or its exception). The caller's context variables go with it, as with anyio. A cancelled caller
stops waiting; work already handed to a thread runs on to its end there (a unit of work is committed whole or not at
all: tests/test_mp_cancelled_work.py); work still queued when its caller is cancelled is not started.

Why not the loop's `run_in_executor` (a `ThreadPoolExecutor` and `asyncio.wrap_future`): each hop there makes a
`concurrent.futures.Future` (its `Condition`, notified in Python), a work item, chains it to an asyncio future by
two done-callbacks and two state copies, and checks for an idle thread through a `Semaphore`: ~16 us of CPU per hop
against ~8.5 us here, 16 callers on uvloop (issue 20; Starlette's `run_in_threadpool` through anyio costs more
still). Here a hop is one asyncio future, one item handed to a waiting thread (the most recently idle one: its caches
are warm; threads start as work comes, at most OWN_EXECUTOR_THREADS) and one `call_soon_threadsafe` back. A pool
may run fewer of its threads at once (`awake`), the rest of the work waiting for them up to STALL.

The pools sit beside anyio's (FastAPI's sync routes keep that one): runtime/db.py sizes every engine's pool for
both (`SESSION_THREADS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from cmglab.runtime.db import OWN_EXECUTOR_THREADS

T = TypeVar("T")

# (the caller's future, its loop, the caller's context, FUNC, ARGS)
_Item = tuple[
    "asyncio.Future[Any]", asyncio.AbstractEventLoop, contextvars.Context, Callable[..., Any], tuple[Any, ...]
]

_pools: weakref.WeakSet[Offload] = weakref.WeakSet()
# seconds work may wait in the backlog for one of the `awake` threads before a thread of its own is woken for it
# (`Offload`'s awake): the awake ones may be waiting on a lock or a database, not running
STALL = 0.02
AWAKE_AT_LEAST = 4


def awake_for_cpus() -> int:
    """How many of a pool's threads a service lets run work at once (`Offload`'s awake): one per CPU the process
    may run on, at least AWAKE_AT_LEAST. Python work under one GIL gains nothing from more threads than that, only
    their wake-ups; signatures and hashing release the GIL, so a process free to use every CPU keeps one each."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cpus = os.cpu_count() or 1
    return max(AWAKE_AT_LEAST, cpus)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: the caller's future gets what its work gave, unless the caller stopped waiting."""
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _yield_on_wakeup() -> None:
    """This thread as SCHED_BATCH (Linux; elsewhere, or refused, it stays as it is): the same share of the CPU as
    before (nice 0), but its wake-ups do not preempt the thread running. A worker handed its work by the event loop
    would otherwise preempt the loop at once (the scheduler favours a thread that slept), find the GIL held by the
    loop and sleep again: two context switches for nothing per hop on a CPU the loop and its workers share (issue 20:
    ~2-4 involuntary switches per request -> ~1). It runs as soon as the loop waits or its time slice ends."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, batch, os.sched_param(0))


class _Worker:
    """One thread: runs the item it is handed, then any queued, then waits (LIFO among the idle) for the next."""

    __slots__ = ("item", "pool", "wake")

    def __init__(self, pool: Offload, item: _Item) -> None:
        self.pool = pool
        self.item: _Item | None = item
        self.wake = threading.Lock()
        self.wake.acquire()  # released by the submitter that hands this thread its next item

    def loop(self) -> None:
        _yield_on_wakeup()
        pool = self.pool
        item: _Item | None = self.item
        while item is not None:
            future, loop, context, func, args = item
            item = self.item = None  # nothing of a finished request is kept alive by an idle thread
            if not future.cancelled():  # a caller cancelled before its work started: the work is not started
                result, error = None, None
                try:
                    result = context.run(func, *args)
                except BaseException as e:  # handed to the caller, as the executor's future does
                    error = e
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for it
                    loop.call_soon_threadsafe(_settle, future, result, error)
                del result, error
            del future, loop, context, func, args  # the request's form, its context: not kept while idle
            with pool.lock:
                if pool.backlog:
                    item = pool.backlog.popleft()[1]
                    continue
                pool.busy -= 1
                if pool.closed:
                    return
                pool.idle.append(self)
            self.wake.acquire()
            item = self.item


class Offload:
    """A named pool of up to OWN_EXECUTOR_THREADS threads (started as work comes).

    AWAKE (at most max_threads, all of them by default): while that many threads run work, new work waits in the
    backlog for the first of them to finish, which takes it without sleeping, instead of waking a thread of its
    own: on a CPU the event loop shares, work that is CPU under one GIL gains nothing from more threads but their
    wake-ups and GIL hand-offs. Work that waited STALL seconds gets a thread of its own (up to max_threads), so
    awake threads waiting on a lock or a database hold nothing up for longer. AWAKE may be a function
    (`awake_for_cpus`), asked when the pool starts its first thread: a service's pools are made when its modules
    are imported, and its worker pinned to a CPU after that, before it serves (runtime/workers.py pin_to)."""

    def __init__(
        self, name: str, max_threads: int = OWN_EXECUTOR_THREADS, awake: int | Callable[[], int] | None = None
    ) -> None:
        self.name, self.max_threads = name, max_threads
        self.awake_of = awake
        self.awake = min(awake, max_threads) if isinstance(awake, int) else max_threads
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []  # waiting threads, the most recently idle last
        self.busy = 0  # threads running work (or handed it)
        # work waiting for a thread, with when it was queued (time.monotonic)
        self.backlog: deque[tuple[float, _Item]] = deque()
        self.check: asyncio.AbstractEventLoop | None = None  # the loop a stall check is pending on
        self.threads: list[threading.Thread] = []
        self.closed = False
        _pools.add(self)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """FUNC(*ARGS) on one of the pool's threads, with the caller's context variables."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.submit((future, loop, contextvars.copy_context(), func, args))
        return await future

    def submit(self, item: _Item) -> None:
        """On ITEM's loop: ITEM to an idle thread, a new one, or the backlog (see the class)."""
        with self.lock:
            if self.closed:
                raise RuntimeError(f"{self.name}: the pool is shut down")
            if self.busy >= self.awake:  # (all max_threads busy among them)
                self.backlog.append((time.monotonic(), item))
                if self.busy < self.max_threads:
                    self._check_later(item[1], STALL)
                return
            thread = self._hand(item)
        if thread is not None:
            self._start(thread)

    def _hand(self, item: _Item) -> threading.Thread | None:
        """Under the lock: ITEM to the most recently idle thread, or to a new thread (returned, to be started)."""
        self.busy += 1
        if self.idle:
            worker = self.idle.pop()
            worker.item = item
            worker.wake.release()
            return None
        if not self.threads and callable(self.awake_of):  # the pool's first thread: the process is pinned by now
            self.awake = min(self.awake_of(), self.max_threads)
        worker = _Worker(self, item)
        thread = threading.Thread(target=worker.loop, name=f"{self.name}_{len(self.threads)}", daemon=True)
        self.threads.append(thread)
        return thread

    def _start(self, thread: threading.Thread) -> None:
        try:
            thread.start()
        except BaseException:
            # no thread to be had (the process' thread limit): the caller gets the error, as from an executor
            with self.lock:
                self.threads.remove(thread)
                self.busy -= 1
            raise

    def _check_later(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Under the lock, on LOOP's thread: a stall check on LOOP in DELAY seconds, unless one is pending on a loop
        not closed."""
        if self.check is None or self.check.is_closed():
            loop.call_later(delay, self._unstall, loop)
            self.check = loop

    def _unstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """On LOOP: work queued STALL seconds ago or more gets a thread of its own (the awake ones are stuck). The
        next check stays on LOOP, running here: the loop of the work next in line may be closed, or another thread's
        (its timers are not to be touched from this one)."""
        started: list[tuple[threading.Thread, tuple[float, _Item]]] = []
        with self.lock:
            self.check = None
            now = time.monotonic()
            while self.backlog and now - self.backlog[0][0] >= STALL and self.busy < self.max_threads:
                if not self.idle and len(self.threads) >= self.max_threads:
                    break
                queued = self.backlog.popleft()
                thread = self._hand(queued[1])
                if thread is not None:
                    started.append((thread, queued))
            if self.backlog and self.busy < self.max_threads and not self.closed:
                self._check_later(loop, max(0.0, self.backlog[0][0] + STALL - now))
        for thread, queued in started:
            try:
                self._start(thread)
            except RuntimeError:  # no thread to be had: the work is first in line again, tried again after STALL
                with self.lock:
                    self.backlog.appendleft(queued)
                    self._check_later(loop, STALL)

    def shutdown(self) -> None:
        """Let every thread end once the work it has and the queued work are done (the interpreter's exit waits)."""
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.wake.release()  # item None: the thread ends
        for thread in list(self.threads):
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join()


def _shutdown_all() -> None:
    for pool in list(_pools):
        pool.shutdown()


# as concurrent.futures does for its executors: before the interpreter ends, work under way finishes (a unit of work
# being committed is not cut off); the threads are daemons so that nothing else waits for them
threading._register_atexit(_shutdown_all)  # type: ignore[attr-defined]
