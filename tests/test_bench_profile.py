"""The bench's profile section (review 2, finding 6): when one py-spy recording fails, the other recordings are
stopped and reaped, not left running past the section."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from cmglab.tools.bench.profile import Sampler, busy


def test_one_failed_recording_stops_the_others() -> None:
    sampler = Sampler.__new__(Sampler)  # its recordings by hand: a py-spy that fails, one still recording
    sampler.dir, sampler.seconds = Path(tempfile.mkdtemp(prefix="cmglab-pyspy-test-")), 1.0
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('no such process'); sys.exit(1)"]
    recording = [sys.executable, "-c", "import time; time.sleep(120)"]
    sampler.procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for name, cmd in (("cmg", failing), ("management-point", recording))
    }
    with pytest.raises(RuntimeError, match="py-spy failed on cmg: no such process"):
        sampler.stacks()
    assert sampler.procs["management-point"].returncode is not None  # killed and reaped
    assert not sampler.dir.exists()


def test_the_services_idle_request_threads_are_not_busy_samples() -> None:
    """A thread of a service's own pool (runtime/offload.py) waiting for work is idle, as a thread of an executor
    is, and so is one waiting for its turn to write to SQLite (runtime/sqlite_writes.py): the stacks are py-spy's
    own for such threads (`py-spy record --format raw --nolineno`; the frames between them abridged)."""
    waiting = (
        "Thread._bootstrap (threading.py);Thread._bootstrap_inner (threading.py);Thread.run (threading.py);"
        "_Worker.loop (cmglab/runtime/offload.py)"
    )
    working = waiting + ";sign (cmglab/services/entra/signing.py)"
    waiting_to_write = waiting + ";WriteLock.acquire (cmglab/runtime/sqlite_writes.py)"
    assert busy(Counter({waiting: 396, working: 4, waiting_to_write: 30})) == Counter({working: 4})
