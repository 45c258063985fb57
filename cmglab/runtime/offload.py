"""A service's own worker threads for its request work (crypto, database), off the event loop.

`Offload.run(func, *args)` hands FUNC to the thread pool by the event loop's own executor hop, which costs less CPU
than Starlette's `run_in_threadpool` (anyio: async-library sniffing, a capacity limiter and run variables per
call; ~0.045 against ~0.02 ms per hop, measured on uvloop, issue 20). Entra's hot handlers and the MP's
`off_loop` (management_point/transport.py) use it, each service on a pool of its own. The caller's context variables
go with it, as with anyio. A cancelled caller stops waiting; the work runs on to its end on its thread (a unit of
work is committed whole or not at all: tests/test_mp_cancelled_work.py).

The pools sit beside anyio's (FastAPI's sync routes keep that one): runtime/db.py sizes every engine's pool for
both (`SESSION_THREADS`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cmglab.runtime.db import OWN_EXECUTOR_THREADS

T = TypeVar("T")


class Offload:
    """A named pool of OWN_EXECUTOR_THREADS threads (started as work comes)."""

    def __init__(self, name: str) -> None:
        self.pool = ThreadPoolExecutor(max_workers=OWN_EXECUTOR_THREADS, thread_name_prefix=name)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """FUNC(*ARGS) on one of the pool's threads, with the caller's context variables."""
        # the loop's run_in_executor without its check that the callable is no coroutine function: the callable it
        # would check is always Context.run (FUNC is its argument), so the check (~5 us of the loop's CPU per hop
        # through inspect) never refused anything; the same submit and the same future chained to the loop
        future = self.pool.submit(contextvars.copy_context().run, func, *args)
        return await asyncio.wrap_future(future, loop=asyncio.get_running_loop())
