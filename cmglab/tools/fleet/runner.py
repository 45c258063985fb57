"""A fleet run: N devices onboarded by a pool of C worker threads against a running lab.

Threads, not processes: the agent is synchronous (httpx.Client) and spends its time waiting on the
services, so one process with C threads keeps C onboardings in flight. Each device's CPU work (TLS,
signing, CMS) runs in this process too, which is why key generation can come from a pool.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from cmglab.agent import keys
from cmglab.runtime.lab import Lab
from cmglab.tools.fleet.device import DeviceResult, FleetPlan, Traffic, onboard
from cmglab.tools.fleet.keypool import KeyPool
from cmglab.tools.processes import SERVICES


@dataclass
class FleetRun:
    results: list[DeviceResult]
    seconds: float
    requests: dict[str, int]  # per service
    concurrency: int
    pooled_keys: int  # keys the pool held at the start (0: no pool)
    fresh_keys: int  # keys generated on the spot after the pool ran dry


def plan(lab: Lab, root: Path, *, crl_check: bool = True) -> FleetPlan:
    """The shared part of every device: hosts, Root CAs, the joining user and ccmsetup's command line."""
    c = lab.config
    cmg = lab.url("cmg").removeprefix("https://")
    ccmsetup = [f"CCMHOSTNAME={cmg}/CCM_Proxy_MutualAuth/{c.site.role_id}", f"SMSSITECODE={c.site.code}"]
    if not crl_check:
        ccmsetup.append("/nocrlcheck")
    by_port = {lab.port(s): s for s in SERVICES}
    return FleetPlan(
        root=root,
        hosts=lab.resolve(),
        roots=x509.load_pem_x509_certificates(lab.pki.ca_bundle.read_bytes()),
        user=c.primary_tenant.users[0],
        ccmsetup=ccmsetup,
        crl_check=crl_check,
        traffic=Traffic(by_port),
    )


def run_id() -> str:
    """What makes a run's device names its own, so that runs (and Locust worker processes) share one lab."""
    return uuid.uuid4().hex[:5].upper()


def device_name(run: str, number: int) -> str:
    """A NetBIOS-sized name (15 characters)."""
    return f"F{run}{number:06d}"[:15]


def device_names(count: int) -> list[str]:
    run = run_id()
    return [device_name(run, i) for i in range(1, count + 1)]


def run(
    lab: Lab,
    count: int,
    *,
    concurrency: int = 8,
    root: Path | None = None,
    key_pool: Path | None = None,
    crl_check: bool = True,
    on_done: Callable[[DeviceResult], None] | None = None,
) -> FleetRun:
    root = root or lab.dir / "fleet" / time.strftime("%Y%m%d-%H%M%S")
    the_plan = plan(lab, root, crl_check=crl_check)
    pool = KeyPool.load(key_pool) if key_pool else None
    pooled = len(pool) if pool is not None else 0
    if pool is not None:
        keys.use_source(pool.take)
    results: list[DeviceResult] = []
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="fleet") as workers:
            futures = [workers.submit(onboard, the_plan, name) for name in device_names(count)]
            try:
                for future in as_completed(futures):
                    result = future.result()
                    results.append(result)
                    if on_done is not None:
                        on_done(result)
            except BaseException:  # interrupted (a bench budget, Ctrl-C): the devices not started never start
                for future in futures:
                    future.cancel()
                raise
    finally:
        keys.use_source(None)
    return FleetRun(
        results,
        time.perf_counter() - started,
        dict(the_plan.traffic.counts),
        concurrency,
        pooled,
        pool.fresh if pool is not None else 0,
    )
