"""The faults of a faults-under-load run, applied one at a time while a fleet onboards.

- `Kill`: kill -9, then start the service again and wait until it is healthy and, for every hop of the
  channel, until a connection point has connected again (a crash, then the service manager's restart);
- `LockDatabase`: another connection holds the SQLite site database's write lock (`BEGIN EXCLUSIVE`) for
  a while. Every write at the MP waits in SQLite's busy handler; when the lock outlasts the connection
  point's timeout the point cuts the request off first (504), and the MP's write lands after the client
  gave up: the case where a reply is lost but the work was done. Reads go on (WAL);
- `Inject`: a `/_lab/faults` rule (delay, status or dropped reply) for its `times` requests, removed
  after `cap_s` at the latest.

`Injector` applies `schedule()`'s faults in order, each once enough devices have finished (so that each
lands in the middle of the load), and notes what it did.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from sqlalchemy import make_url

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses

CHANNEL_SERVICES = ("management-point", "cmg", "cmg-connection-point")  # a restart leaves the CMG without a point


@dataclass
class FaultContext:
    lab: Lab
    procs: LabProcesses
    http: httpx.Client  # trusts the lab CA, maps the lab's names
    before_kill: Callable[[str], None]  # e.g. collect the service's request records while it still has them

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.lab.admin_token()}"}


class Fault(Protocol):
    @property
    def name(self) -> str: ...

    def apply(self, ctx: FaultContext) -> str:
        """Do it and undo it; what happened, in a few words."""
        ...


@dataclass
class Kill:
    service: str

    @property
    def name(self) -> str:
        return f"kill -9 {self.service}, restart"

    def apply(self, ctx: FaultContext) -> str:
        ctx.before_kill(self.service)
        started = time.monotonic()
        ctx.procs.kill(self.service)
        ctx.procs.start(self.service)
        if self.service in CHANNEL_SERVICES:
            ctx.procs.wait_channel()
        return f"serving again after {time.monotonic() - started:.1f} s"


@dataclass
class LockDatabase:
    seconds: float
    service: str = "management-point"

    @property
    def name(self) -> str:
        return f"{self.service} database write-locked for {self.seconds:g} s"

    def apply(self, ctx: FaultContext) -> str:
        url = make_url(ctx.lab.database_url(self.service))
        if url.get_backend_name() != "sqlite" or not url.database:
            raise ValueError(f"only a SQLite database can be locked this way, not {url.get_backend_name()}")
        conn = sqlite3.connect(url.database, timeout=30, isolation_level=None)
        try:
            waited = time.monotonic()
            conn.execute("BEGIN EXCLUSIVE")  # waits for a write in progress, then no one else writes
            waited = time.monotonic() - waited
            time.sleep(self.seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return f"held {self.seconds:g} s (after waiting {waited:.1f} s for a writer)"


@dataclass
class Inject:
    service: str
    rule: dict[str, Any]  # a cmglab.runtime.admin.FaultRule
    what: str
    cap_s: float = 20.0

    @property
    def name(self) -> str:
        return f"{self.service}: {self.what}"

    def apply(self, ctx: FaultContext) -> str:
        url = f"{ctx.lab.url(self.service)}/_lab/faults"
        reply = ctx.http.post(url, json=self.rule, headers=ctx.admin())
        reply.raise_for_status()
        fault_id, hits = reply.json()["id"], 0
        deadline = time.monotonic() + self.cap_s
        try:
            while time.monotonic() < deadline:
                listed = ctx.http.get(url, headers=ctx.admin())  # the CMG's /_lab is the admin's only
                listed.raise_for_status()
                mine = [f for f in listed.json()["faults"] if f["id"] == fault_id]
                if not mine:  # the service removes a rule once its `times` are used up
                    hits = int(self.rule.get("times") or hits)
                    break
                hits = int(mine[0]["hits"])
                time.sleep(0.2)
        finally:
            ctx.http.delete(url, headers=ctx.admin()).raise_for_status()
        if not hits:
            raise RuntimeError(f"no request matched {self.rule['path']!r} within {self.cap_s:g} s")
        return f"{hits} request(s) hit"


def schedule(*, upstream_timeout: float, client_timeout: float, concurrency: int) -> list[Fault]:
    """One of each: the three restarts, the database, delays past each hop's timeout, drops, 5xx.

    Entra comes first: only a device that is joining asks it for tokens, and late in the run the devices in
    flight may all be past that step (`Injector` sees to it that devices are still to start)."""
    n = concurrency
    late_for_point = int((upstream_timeout + 1) * 1000)
    late_for_client = int((client_timeout + 1) * 1000)
    return [
        Inject("entra", {"path": "/oauth2/token", "delay_ms": 1500, "times": 2 * n}, "Entra tokens 1.5 s late"),
        Kill("cmg-connection-point"),
        Inject(
            "management-point",
            {"path": "^/CCM_STS$", "delay_ms": late_for_point, "times": n},
            f"CCM_STS answers {late_for_point} ms late, after the connection point's timeout",
        ),
        Kill("management-point"),
        Inject(
            "cmg",
            {"path": "ccm_system_tokenauth/request", "drop": True, "times": n},
            "CcmMessaging replies dropped mid-reply",
        ),
        LockDatabase(upstream_timeout + 2),
        Kill("cmg"),
        Inject(
            "management-point",
            {"path": "ccm_system_tokenauth/request", "status": 503, "times": n},
            "CcmMessaging answered 503",
        ),
        Inject(
            "cmg",
            {"path": "AADAuthInfo", "delay_ms": late_for_client, "times": 1},
            f"AADAuthInfo answers {late_for_client} ms late, after the client's timeout",
        ),
    ]


@dataclass
class Applied:
    fault: str
    at_s: float  # since the fleet started
    seconds: float
    devices_done: int  # when it began
    devices_active: int  # onboarding at some time while it lasted: 0 means it did not land under load
    detail: str = ""
    error: str = ""


@dataclass
class Progress:
    """Devices started, finished and in flight (thread-safe)."""

    started: int = 0
    done: int = 0
    running: int = 0
    finished: bool = False  # the whole fleet
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        with self._lock:
            self.started += 1
            self.running += 1

    def finish(self) -> None:
        with self._lock:
            self.running -= 1
            self.done += 1


class Injector(threading.Thread):
    """Applies the faults in order: fault i once `thresholds[i]` devices have finished. The fleet paces
    itself on it (`wait_turn`): device k starts only once every fault whose threshold is at most
    k - `ahead` has begun. So each fault begins with devices still to start, which go through every step of
    an onboarding while it lasts, whatever step the fault hurts and however long the faults before it took."""

    def __init__(
        self, faults: list[Fault], ctx: FaultContext, thresholds: list[int], progress: Progress, ahead: int
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.faults, self.ctx, self.thresholds, self.progress, self.ahead = faults, ctx, thresholds, progress, ahead
        self.applied: list[Applied] = []
        self._begun = 0
        self._over = False
        self._turn = threading.Condition()

    def wait_turn(self, device: int, timeout: float) -> None:
        """Until device number `device` may start (at once when the faults are over or failed)."""
        needed = sum(1 for t in self.thresholds if t + self.ahead <= device)
        with self._turn:
            self._turn.wait_for(lambda: self._over or self._begun >= needed, timeout)

    def run(self) -> None:
        started = time.monotonic()
        try:
            for fault, threshold in zip(self.faults, self.thresholds, strict=True):
                while self.progress.done < threshold and not self.progress.finished:
                    time.sleep(0.1)
                self.applied.append(self._apply(fault, started))
        finally:
            with self._turn:
                self._over = True
                self._turn.notify_all()

    def _apply(self, fault: Fault, started: float) -> Applied:
        begun = time.monotonic()
        running, starts = self.progress.running, self.progress.started
        with self._turn:  # the devices waiting for this fault start now
            self._begun += 1
            self._turn.notify_all()
        entry = Applied(fault.name, round(begun - started, 1), 0.0, self.progress.done, 0)
        try:
            entry.detail = fault.apply(self.ctx)
        except Exception as e:  # noted in the report: a fault that could not be applied fails the run
            entry.error = f"{type(e).__name__}: {e}"
        entry.seconds = round(time.monotonic() - begun, 1)
        entry.devices_active = running + self.progress.started - starts
        return entry


def thresholds(devices: int, faults: int, ahead: int) -> list[int]:
    """Evenly through the run, the last `ahead` devices or more before its end: those, held back by
    `Injector.wait_turn`, onboard under the last fault."""
    return [(devices - 2 * ahead) * (i + 1) // (faults + 1) for i in range(faults)]
