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
are warm; threads start as work comes, at most OWN_EXECUTOR_THREADS) and one `call_soon_threadsafe` back.

The pools sit beside anyio's (FastAPI's sync routes keep that one): runtime/db.py sizes every engine's pool for
both (`SESSION_THREADS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
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
                    item = pool.backlog.popleft()
                    continue
                if pool.closed:
                    return
                pool.idle.append(self)
            self.wake.acquire()
            item = self.item


class Offload:
    """A named pool of up to OWN_EXECUTOR_THREADS threads (started as work comes)."""

    def __init__(self, name: str, max_threads: int = OWN_EXECUTOR_THREADS) -> None:
        self.name, self.max_threads = name, max_threads
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []  # waiting threads, the most recently idle last
        self.backlog: deque[_Item] = deque()  # work waiting for a thread (all max_threads busy)
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
        with self.lock:
            if self.closed:
                raise RuntimeError(f"{self.name}: the pool is shut down")
            if self.idle:
                worker = self.idle.pop()
                worker.item = item
                worker.wake.release()
                return
            if len(self.threads) >= self.max_threads:
                self.backlog.append(item)
                return
            worker = _Worker(self, item)
            thread = threading.Thread(target=worker.loop, name=f"{self.name}_{len(self.threads)}", daemon=True)
            self.threads.append(thread)
        try:
            thread.start()
        except BaseException:
            # no thread to be had (the process' thread limit): the caller gets the error, as from an executor
            with self.lock:
                self.threads.remove(thread)
            raise

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
