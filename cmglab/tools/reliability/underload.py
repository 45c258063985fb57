"""Faults under load (issue 10): `python -m cmglab.tools.reliability.underload --out reliability/results --devices 300`.

A lab of its own on free ports and a fleet that onboards in it (join, ccmsetup through the CMG with
`/retry:`, registration, a policy cycle; `concurrency` devices at a time, keys from a pool) while
`faults.schedule()` hurts the lab one fault at a time. Then every device runs its next cycle, as a real
client does at its next schedule: what it has not finished yet, then a policy cycle with the token and
the registration it holds. Counted, each with the goal 0:

- completed operations lost: a join Entra does not know, a registration the client was told of that the
  site has no row for, a CCM token the client holds that the site never recorded, a device that had
  onboarded whose next cycle is refused;
- requests left hanging past their configured timeout (`watch.py`);
- devices that failed and did not recover on their next cycle.

The clients retry as the real client does (CcmMessaging, CCM_STS, RegTask, ccmsetup `/retry:`); the
report counts their retry lines.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import jwt

from cmglab.agent import keys
from cmglab.agent.ccm.state import ClientState
from cmglab.agent.ccm.tokens import TokenCache
from cmglab.agent.device import Device
from cmglab.agent.dsregcmd.join import join_state
from cmglab.services.cmg.proxy import CHANNEL_MARGIN
from cmglab.tools.fleet import keypool, runner
from cmglab.tools.fleet.device import DeviceResult, FleetPlan, next_cycle, onboard
from cmglab.tools.processes import LabProcesses, isolated_lab
from cmglab.tools.reliability import faults, invariants
from cmglab.tools.reliability.campaign import LAB_SERVICES
from cmglab.tools.reliability.faultsreport import FaultsReport
from cmglab.tools.reliability.labview import SERVICES, LabView
from cmglab.tools.reliability.watch import RecordCollector, RequestWatch, WatchedPlan

# ccmsetup as the real one runs, retrying a site it cannot reach (the product's default is every 10 minutes)
CCMSETUP_RETRY = ["/retry:0.05", "/downloadtimeout:2"]
PACE_MAX_S = 600  # the longest a device waits for the fault it is held back for to begin
_ASSIGNED = re.compile(r"Server assigned ClientID is (GUID:[0-9A-F-]{36})")
RETRY_LINES = {
    "CcmMessaging message sent again": re.compile(r"Failed to send message '[^']+' to endpoint '\w+' \(attempt"),
    "CCM_STS request sent again": re.compile(r"Failed to get CCM token \(attempt"),
    "GET sent again (content, policy)": re.compile(r"Failed to get '[^']+' \(attempt"),
    "RegTask slept, registered again": re.compile(r"\[RegTask\] - Sleeping for"),
    "ccmsetup /retry": re.compile(r"Next retry in [\d.]+ minute"),
    "[CCMHTTP] ERROR lines": re.compile(r"\[CCMHTTP\] ERROR:"),
}


def run(
    out: Path, devices: int, *, concurrency: int = 8, upstream_timeout: float = 5.0, lab_dir: Path | None = None
) -> FaultsReport:
    """A faults-under-load run in a new lab (under `lab_dir`, else a temporary directory); writes the report."""
    started = time.monotonic()
    client_timeout = upstream_timeout + CHANNEL_MARGIN + 3  # the CMG's 504 arrives before the client gives up
    report = FaultsReport(
        devices,
        concurrency,
        {
            "upstream (connection point -> MP)": upstream_timeout,
            "CMG -> connection point": upstream_timeout + CHANNEL_MARGIN,
            "client": client_timeout,
        },
    )
    service_env = {
        "CMGLAB_UPSTREAM_TIMEOUT": str(upstream_timeout),
        "CMGLAB_REQUEST_LOG_SIZE": "1000000",
        "CMGLAB_CHANNEL_HEARTBEAT": "2",
        "CMGLAB_CHANNEL_BACKOFF_MAX": "2",
    }
    agent_env = {"CMGLAB_CLIENT_TIMEOUT": str(client_timeout), "CMGLAB_REGTASK_INTERVAL": "1"}
    with tempfile.TemporaryDirectory(prefix="cmglab-faults-") as tmp:
        base = lab_dir or Path(tmp)
        lab = isolated_lab(base / "lab")
        procs = LabProcesses(lab, env=service_env)
        try:
            procs.ensure(*LAB_SERVICES)
            keypool.generate(base / "keypool.pem", devices)
            pool = keypool.KeyPool.load(base / "keypool.pem")
            watch = RequestWatch(client_timeout)
            plan = WatchedPlan(**vars(runner.plan(lab, base / "fleet")), watch=watch)
            plan.ccmsetup += CCMSETUP_RETRY
            view = LabView(lab)
            keys.use_source(pool.take)
            try:
                with environment(agent_env):
                    _run(report, plan, watch, procs, view, upstream_timeout)
            finally:
                keys.use_source(None)
                view.close()
        finally:
            procs.stop_all()
    report.elapsed_s = time.monotonic() - started
    report.write(out)
    return report


def _run(
    report: FaultsReport, plan: FleetPlan, watch: RequestWatch, procs: LabProcesses, view: LabView, upstream: float
) -> None:
    lab = procs.lab
    names = runner.device_names(report.devices)
    records = RecordCollector(view, SERVICES)
    records.collect_all()
    plan_faults = faults.schedule(upstream_timeout=upstream, client_timeout=watch.bound, concurrency=report.concurrency)
    progress = faults.Progress()
    ahead = report.concurrency
    injector = faults.Injector(
        plan_faults,
        faults.FaultContext(lab, procs, view.http, records.collect),
        faults.thresholds(len(names), len(plan_faults), ahead),
        progress,
        ahead,
    )
    injector.start()
    cycle_started = time.monotonic()
    first = fleet(plan, names, onboard, report.concurrency, progress, pace=injector.wait_turn)
    progress.finished = True
    injector.join()
    report.cycle_s["first"] = round(time.monotonic() - cycle_started, 1)
    report.faults = injector.applied
    for service in SERVICES:  # nothing left over for the next cycle
        view.http.delete(f"{lab.url(service)}/_lab/faults", headers={"Authorization": f"Bearer {lab.admin_token()}"})
    procs.ensure(*LAB_SERVICES)
    cycle_started = time.monotonic()
    second = fleet(plan, names, next_cycle, report.concurrency, faults.Progress())
    report.cycle_s["next"] = round(time.monotonic() - cycle_started, 1)
    records.collect_all()

    report.first_cycle_failed = dict(Counter(r.reason for r in first.values() if not r.ok).most_common())
    report.recovered = sum(1 for n in names if not first[n].ok and second[n].ok)
    report.unrecovered = [f"{n}: {second[n].reason}" for n in names if not first[n].ok and not second[n].ok]
    report.lost = [
        f"{n}: onboarded, then its next cycle failed: {second[n].reason}"
        for n in names
        if first[n].ok and not second[n].ok
    ]
    report.lost += lost_at_the_site(plan, names, view, report)
    report.hanging = watch.slow + records.slow(upstream)
    report.client_requests = {
        "sent": watch.requests,
        "no reply": watch.failures,
        "by status": dict(sorted(watch.statuses.items())),
    }
    report.longest_s = records.longest()
    report.retries = retry_lines(plan, names)
    report.invariant_violations = [line for lines in invariants.check(view).values() for line in lines]


def fleet(
    plan: FleetPlan,
    names: list[str],
    cycle: Callable[[FleetPlan, str], DeviceResult],
    concurrency: int,
    progress: faults.Progress,
    pace: Callable[[int, float], None] | None = None,
) -> dict[str, DeviceResult]:
    """Every device's `cycle`, `concurrency` at a time, each started when `pace` lets it."""

    def one(numbered: tuple[int, str]) -> DeviceResult:
        number, name = numbered
        if pace is not None:
            pace(number, PACE_MAX_S)
        progress.start()
        try:
            return cycle(plan, name)
        finally:
            progress.finish()

    with ThreadPoolExecutor(concurrency, thread_name_prefix="fleet") as workers:
        return {r.name: r for r in workers.map(one, enumerate(names))}


def lost_at_the_site(plan: FleetPlan, names: list[str], view: LabView, report: FaultsReport) -> list[str]:
    """What each device was told it has that the site does not know: its Entra device, every registration
    RegTask logged as done, the CCM token in its cache. Also counts the site's orphaned registrations."""
    entra = {str(d.get("device_id", "")).lower() for d in view.listing("entra", "devices")}
    clients = view.listing("management-point", "clients")
    sms_ids = {c["sms_id"] for c in clients}
    tokens = {t["unique_id"] for t in view.listing("management-point", "tokens")}
    lost, held = [], set()
    told = 0
    for name in names:
        device = Device.open(plan.home(name))
        joined = join_state(device)
        if joined and str(joined["DeviceId"]).lower() not in entra:
            lost.append(f"{name}: joined as device {joined['DeviceId']}, which Entra does not have")
        log = device.ccm_log_path("ClientIDManagerStartup.log")
        for sms_id in _ASSIGNED.findall(log.read_text(errors="replace") if log.exists() else ""):
            told += 1
            if sms_id not in sms_ids:
                lost.append(f"{name}: told it is registered as {sms_id}, which the site does not have")
        state = ClientState.load(device)
        if state is not None and state.sms_id:
            held.add(state.sms_id)
        cached = TokenCache(device).get()
        if cached is not None:
            unique = jwt.decode(cached["Token"], options={"verify_signature": False}).get("UniqueId")
            if unique not in tokens:
                lost.append(f"{name}: holds CCM token {unique}, which the site never recorded")
    ours = {n.upper() for n in names}
    report.orphans = sum(
        1 for c in clients if str(c.get("netbios_name", "")).upper() in ours and c["sms_id"] not in held
    )
    report.checked = {
        "devices": len(names),
        "registrations the clients were told of": told,
        "site clients": len(clients),
        "site tokens": len(tokens),
        "Entra devices": len(entra),
    }
    return lost


def retry_lines(plan: FleetPlan, names: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(RETRY_LINES, 0)
    for name in names:
        for log in (plan.home(name) / "Windows").rglob("*.log"):
            text = log.read_text(errors="replace")
            for kind, pattern in RETRY_LINES.items():
                counts[kind] += len(pattern.findall(text))
    return counts


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """The agent's settings for this run (the agent reads them when it uses them), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cmglab.tools.reliability.underload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("reliability/results"))
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=5.0,
        help="CMGLAB_UPSTREAM_TIMEOUT of the run's services (the client's is 8 s more)",
    )
    parser.add_argument("--lab-dir", type=Path, help="keep the run's lab and fleet here (default: a temporary one)")
    args = parser.parse_args(argv)
    report = run(
        args.out,
        args.devices,
        concurrency=args.concurrency,
        upstream_timeout=args.upstream_timeout,
        lab_dir=args.lab_dir,
    )
    sys.stdout.write(report.markdown())
    return 0 if report.goals_met() else 1


if __name__ == "__main__":
    sys.exit(main())
