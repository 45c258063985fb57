"""Every bench section bounded in time, and one section's failure a line in the report, not the run's end.

A section runs under a budget (SIGALRM in the main thread: the section's own `finally` blocks stop the
processes it started); a budget scales with the machine's load, since a shared machine slows everything. A
section that fails or runs out of time becomes a stub (its title, `failed` and a note saying why), the report
lists it at the top, and the sections after it still run.

SectionTimeout is a BaseException: the alarm fires at an arbitrary bytecode, and an `except Exception` in code
the section runs must not swallow it (the section would then run unbounded). Clean-up runs under `cleanup()`,
which disarms the alarm, so that the budget never interrupts the `finally` that stops a section's processes.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cmglab.tools.processes import load_factor

T = TypeVar("T")


class SectionTimeout(BaseException):
    """A section ran past its budget (not an Exception: see the module's docstring)."""


@contextmanager
def cleanup() -> Iterator[None]:
    """Disarm the section's alarm while the block runs (a section's clean-up), then re-arm what was left of it.

    Outside the main thread, or with no alarm armed, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    left, _interval = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        if left > 0:  # the clean-up's own time does not count against the budget
            signal.setitimer(signal.ITIMER_REAL, left)


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise SectionTimeout in the main thread once `seconds` have passed (elsewhere: no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise SectionTimeout(f"{what} ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


@dataclass
class Guard:
    """Runs sections under their budgets and remembers which failed."""

    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall-clock seconds each step took

    def run(self, key: str, title: str, budget_s: float, fn: Callable[[], T]) -> T | None:
        """fn() within budget_s × the load factor, or None (recorded) when it raised or ran out of time."""
        budget = budget_s * load_factor()
        started = time.monotonic()
        try:
            with time_limit(budget, title):
                return fn()
        except (Exception, SectionTimeout) as e:  # one section's failure is reported; the others still run
            self.failed.append(
                {
                    "section": key,
                    "title": title,
                    "reason": _reason(e),
                    "timed_out": isinstance(e, SectionTimeout),  # ran out of its budget, rather than raised
                    "after_s": round(time.monotonic() - started, 1),
                    "budget_s": round(budget),
                    "trace": traceback.format_exc()[-3000:],
                }
            )
            return None
        finally:
            self.seconds[title] = round(time.monotonic() - started, 1)

    def section(self, key: str, title: str, budget_s: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A section's dict, or a stub with its title saying it failed and why."""
        got = self.run(key, title, budget_s, fn)
        return got if got is not None else self.stub(key, title)

    def stub(self, key: str, title: str) -> dict[str, Any]:
        why = next((f for f in self.failed if f["section"] == key), None)
        reason = f"{why['reason']} (after {why['after_s']} s, budget {why['budget_s']} s)" if why else "not run"
        return {"title": f"{title} (FAILED)", "note": f"FAILED: {reason}", "failed": reason, "rows": []}
