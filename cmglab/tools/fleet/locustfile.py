"""The fleet driven by Locust: every Locust user is one simulated device, onboarded by the agent's own
components (`device.onboard`: join Entra, ccmsetup through the CMG, registration, a policy cycle) that then
lives as an installed client: policy cycles and CCM token renewals through the CMG until the run ends.

Each device request is a Locust request event (type: the service the device addressed, name: its step, as
in the fleet summary), each flow one more (type "flow": onboarding, policy cycle, token renewal), so Locust's
statistics are per-step latencies and failures, and distributed mode (`--master`/`--worker`, `--processes`)
simulates more devices than one machine can. `cmglab fleet locust ARGS` runs this file.

Locust runs users as gevent greenlets and monkey-patches the standard library when it is imported, before
this file: the agent's synchronous httpx clients then wait on cooperative sockets, so one process keeps many
devices in flight. CPU work does not yield: while one device computes (RSA key generation, four keys per
device at 50-100 ms each; loading its private keys for signing) every other device's request timer runs on.
Hence `--key-pool` (`cmglab fleet keys`) and one Locust process per core (`--processes`).
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from locust import User, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from cmglab.agent import keys
from cmglab.agent.device import Device
from cmglab.agent.network import DeviceNetwork
from cmglab.runtime.lab import Lab
from cmglab.tools.fleet import device, runner
from cmglab.tools.fleet.keypool import KeyPool

log = logging.getLogger("cmglab.tools.fleet")

# paths name files of the machine a process runs on, so each process takes them from its own command line
# or environment, here at start-up: Locust overwrites a worker's custom arguments with the master's
_PATHS = ("lab", "key_pool", "fleet_dir")
_local_paths: dict[str, str | None] = {}


class Refused(Exception):
    """A request the service answered with an HTTP error."""


class Failed(Exception):
    """A device flow that did not complete (its reason, with IDs and numbers taken out)."""


@events.init_command_line_parser.add_listener
def _arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--lab",
        env_var="CMGLAB_LAB_DIR",
        default=".cmglab",
        include_in_web_ui=False,
        help="the lab directory on this machine (a worker's: `cmglab fleet export`)",
    )
    parser.add_argument(
        "--key-pool",
        env_var="CMGLAB_FLEET_KEY_POOL",
        default=None,
        include_in_web_ui=False,
        help="pre-generated keys (`cmglab fleet keys`), a lab shortcut; processes sharing one "
        "pool file take disjoint shares by worker index (set --expect-workers)",
    )
    parser.add_argument(
        "--fleet-dir",
        default=None,
        include_in_web_ui=False,
        help="where the device homes go on this machine (default <lab>/fleet/locust-<run>)",
    )
    parser.add_argument(
        "--cycle-wait",
        type=float,
        default=30.0,
        help="mean seconds between a device's client cycles (a real client: an hour)",
    )
    parser.add_argument(
        "--renew-every",
        type=int,
        default=5,
        help="a device renews its CCM token every N cycles, starting with the first (a real "
        "client: when the token is close to expiry, hours apart)",
    )
    parser.add_argument(
        "--no-crl-check", action="store_true", default=False, help="devices skip CRL checks (ccmsetup /nocrlcheck)"
    )


@events.init.add_listener
def _start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    _local_paths.update({name: getattr(options, name, None) for name in _PATHS})
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request: Locust's statistics say it all


@dataclass
class _Node:
    """What the devices of one Locust process share: the fleet plan, device names, the key pool."""

    environment: Environment
    plan: device.FleetPlan
    run: str
    numbers: itertools.count[int]
    pool: KeyPool | None

    @classmethod
    def start(cls, environment: Environment) -> _Node:
        options = _options(environment)
        lab = Lab.load(Path(_local_paths["lab"] or ".cmglab"))
        run = runner.run_id()  # per process, made after Locust's --processes forked it
        root = Path(_local_paths["fleet_dir"] or lab.dir / "fleet" / f"locust-{run}")
        plan = runner.plan(lab, root, crl_check=not options.no_crl_check)
        node = cls(environment, plan, run, itertools.count(1), None)
        plan.observe = node.report
        if pool_path := _local_paths["key_pool"]:
            index = max(getattr(environment.runner, "worker_index", 0), 0)
            shares = max(int(options.expect_workers or 1), index + 1)  # the master's, forwarded to workers
            node.pool = KeyPool.load(Path(pool_path), share=index, shares=shares)
            keys.use_source(node.pool.take)
            log.info(f"key pool: {len(node.pool)} keys (share {index + 1} of {shares} of {pool_path})")
        log.info(f"devices F{run}######: homes under {root}")
        return node

    def name(self) -> str:
        return runner.device_name(self.run, next(self.numbers))

    def report(self, step: str, response: httpx.Response, seconds: float) -> None:
        refused = Refused(f"HTTP {response.status_code}") if response.status_code >= 400 else None
        self.environment.events.request.fire(
            request_type=self.plan.traffic.service(response.request),
            name=step,
            response_time=seconds * 1000,
            response_length=int(response.headers.get("content-length") or 0),
            exception=refused,
            context={},
        )

    def flow(self, name: str, seconds: float, failure: str | None) -> None:
        self.environment.events.request.fire(
            request_type="flow",
            name=name,
            response_time=seconds * 1000,
            response_length=0,
            exception=Failed(failure) if failure is not None else None,
            context={},
        )


_node: _Node | None = None


def _options(environment: Environment) -> Namespace:
    if environment.parsed_options is None:
        raise RuntimeError("run this file with the locust command (`cmglab fleet locust`)")
    return environment.parsed_options


def node_of(environment: Environment) -> _Node:
    global _node
    if _node is None:  # made by the process' first device; nothing in start() yields to another greenlet
        _node = _Node.start(environment)
    return _node


@events.test_stop.add_listener
def _pool_report(**_: Any) -> None:
    if _node is not None and _node.pool is not None and _node.pool.fresh:
        log.warning(f"the key pool ran dry: {_node.pool.fresh} keys generated on the spot (`cmglab fleet keys`)")


class FleetDevice(User):
    """One device: onboarded when its user starts, then an installed client's cycles until the run ends."""

    def wait_time(self) -> float:
        # clients poll policy on an interval, each at its own moment: the same with a shorter interval
        return float(random.uniform(0.5, 1.5) * _options(self.environment).cycle_wait)

    def on_start(self) -> None:
        self.node = node_of(self.environment)
        self.device_name = self.node.name()
        self.home = self.node.plan.home(self.device_name)
        self.onboarded = False
        self.cycles = 0
        self.onboard(device.onboard)

    def onboard(self, how: Callable[[device.FleetPlan, str], device.DeviceResult]) -> None:
        result = how(self.node.plan, self.device_name)
        self.node.flow("onboarding", result.seconds, None if result.ok else result.reason)
        self.onboarded = result.ok

    @task
    def client_cycle(self) -> None:
        """A CcmExec cycle: policy, with the CCM token renewed first when its turn comes."""
        if not self.onboarded:  # the device retries what it has not finished (join, ccmsetup), as a real one does
            self.onboard(device.next_cycle)
            return
        if self.cycles % max(1, _options(self.environment).renew_every) == 0:
            self.run_flow("token renewal", device.token_renewal)
        self.run_flow("policy cycle", device.policy_cycle)
        self.cycles += 1

    def run_flow(self, flow: str, action: Callable[[Device, DeviceNetwork], None]) -> None:
        the_device = Device.open(self.home)
        started = time.perf_counter()
        failure = None
        try:
            action(the_device, self.node.plan.network(the_device))
        except Exception as e:  # a failed cycle is a failure in the statistics; the device carries on
            failure = device.reason_key(f"{type(e).__name__}: {e}")
        finally:
            the_device.close_logs()
        self.node.flow(flow, time.perf_counter() - started, failure)
