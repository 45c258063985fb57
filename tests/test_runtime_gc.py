"""runtime/server.py `freeze_startup_heap`: a service process of its own (run_service) moves its startup heap out of
the collector's reach and collects its young generation every YOUNG_COLLECTION net allocations, not Python's 700;
cyclic garbage made while serving is still collected."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc, weakref
from cmglab.runtime.server import YOUNG_COLLECTION, freeze_startup_heap
freeze_startup_heap()
assert gc.get_threshold()[0] == YOUNG_COLLECTION > 700, gc.get_threshold()
assert gc.get_freeze_count() > 0

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

refs = [cycle() for _ in range(3 * YOUNG_COLLECTION)]  # garbage in cycles only: no explicit collection
assert sum(r() is not None for r in refs) < YOUNG_COLLECTION, "cyclic garbage was never collected"
print("ok")
"""


def test_a_service_process_collects_its_young_generation_less_often_but_still_collects_cycles() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
