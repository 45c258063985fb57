"""One fleet device: its own home under the fleet directory, onboarded by the client agent's own
components, in-process (no subprocess per command): `Joiner.join` (dsregcmd /join), `Installer.run`
(ccmsetup through the CMG, registration included) and `PolicyAgent.evaluate` (a CcmExec policy cycle).
Every request it sends is timed and attributed to a step (`steps.step_of`)."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509

from cmglab.agent.ccm.client import CcmClient
from cmglab.agent.ccm.location import rotate_internet_mp
from cmglab.agent.ccm.policy import PolicyAgent
from cmglab.agent.ccm.state import ClientState, ManagementPoint
from cmglab.agent.ccmsetup.cmdline import ExitCode, parse
from cmglab.agent.ccmsetup.installer import Installer
from cmglab.agent.certstore import ROOT, StoredCert
from cmglab.agent.device import Device
from cmglab.agent.dsregcmd.join import Joiner, join_state
from cmglab.agent.network import DeviceNetwork
from cmglab.core.labconfig import User
from cmglab.core.logs import cmtrace_logger
from cmglab.tools.fleet.steps import step_of
from cmglab.wire import tracing

_START = "cmglab.tools.fleet.start"
_SETUP_FAILED = re.compile(r"CcmSetup failed: (.*?)\]LOG\]")
_VARYING = re.compile(r"GUID:[0-9A-F-]+|\{?[0-9A-Fa-f]{8}-[0-9A-Fa-f-]{27}\}?|0x[0-9A-Fa-f]+|\d+(\.\d+)?")

# told of each device request as its reply head arrives: its step, the reply, seconds (Locust's request events)
Observer = Callable[[str, httpx.Response, float], None]


def reason_key(text: str) -> str:
    """A failure text with IDs, numbers and ports taken out, so that equal failures group together."""
    return _VARYING.sub("#", text.strip().splitlines()[0] if text.strip() else "unknown")[:160]


@dataclass
class Traffic:
    """Requests per service of the whole fleet (by the port the device addressed), thread-safe."""

    services_by_port: dict[int, str]
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def service(self, request: httpx.Request) -> str:
        return self.services_by_port.get(request.url.port or 443, request.url.host)

    def count(self, request: httpx.Request) -> None:
        service = self.service(request)
        via_cmg = "ccm_proxy_" in request.url.path.lower() and "aadauthinfo" not in request.url.path.lower()
        with self._lock:
            self.counts[service] += 1
            if via_cmg:  # the CMG forwards it over the channel: the MP answers it too
                self.counts["management-point (via CMG)"] += 1


@dataclass
class DeviceResult:
    name: str
    ok: bool
    seconds: float
    steps: dict[str, float]  # seconds spent in each step's requests
    reason: str = ""


class DeviceTimer:
    """The httpx hooks of one device: time each request to its reply head and add it to its step."""

    def __init__(self, traffic: Traffic, observe: Observer | None = None) -> None:
        self.traffic = traffic
        self.observe = observe
        self.steps: dict[str, float] = defaultdict(float)
        self.first_refusal = ""

    def on_request(self, request: httpx.Request) -> None:
        request.extensions[_START] = time.perf_counter()

    def on_response(self, response: httpx.Response) -> None:
        request = response.request
        elapsed = time.perf_counter() - request.extensions.get(_START, time.perf_counter())
        step = step_of(request)
        self.steps[step] += elapsed
        self.traffic.count(request)
        if self.observe is not None:
            self.observe(step, response, elapsed)
        if response.status_code >= 400 and not self.first_refusal:
            self.first_refusal = f"{step}: HTTP {response.status_code}"


class FleetNetwork(DeviceNetwork):
    """The device's network with the fleet's timing hooks after the agent's own (trace headers first,
    so that the step the agent names is on the request when it is classified)."""

    def __init__(self, device: Device, timer: DeviceTimer, *, crl_check: bool) -> None:
        super().__init__(device, crl_check=crl_check)
        self.timer = timer

    def client(self, client_cert: StoredCert | None = None) -> httpx.Client:
        http = super().client(client_cert)
        hooks = http.event_hooks
        http.event_hooks = {
            "request": [*hooks["request"], self.timer.on_request],
            "response": [*hooks["response"], self.timer.on_response],
        }
        return http


@dataclass
class FleetPlan:
    """What every device of a run shares."""

    root: Path  # the fleet directory: one device home per device under it
    hosts: list[str]  # the lab's name mapping, as `cmglab device create` copies it
    roots: list[x509.Certificate]  # the lab CA bundle for the Root store
    user: User  # who joins the devices (dsregcmd /join --username)
    ccmsetup: list[str]  # the ccmsetup command line
    crl_check: bool
    traffic: Traffic
    observe: Observer | None = None

    def home(self, name: str) -> Path:
        return self.root / name.lower()

    def network(self, device: Device) -> FleetNetwork:
        """The device's network, its requests timed into the fleet's traffic (and the observer)."""
        return FleetNetwork(device, DeviceTimer(self.traffic, self.observe), crl_check=self.crl_check)


def onboard(plan: FleetPlan, name: str) -> DeviceResult:
    """Create, join, install (register) and run one policy cycle; never raises: a failure is a result."""
    started = time.perf_counter()
    device = Device.create(plan.home(name), name=name, hosts=plan.hosts)
    for cert in plan.roots:
        device.stores.add(ROOT, cert, friendly_name=cert.subject.rfc4514_string())
    return _cycle(plan, device, name, started)


def next_cycle(plan: FleetPlan, name: str) -> DeviceResult:
    """An onboarded device's next scheduled run, as a real client's: what it has not finished (the join task,
    ccmsetup), then a policy cycle with what it holds (its token, its registration); never raises."""
    return _cycle(plan, Device.open(plan.home(name)), name, time.perf_counter())


def _cycle(plan: FleetPlan, device: Device, name: str, started: float) -> DeviceResult:
    network = plan.network(device)
    timer = network.timer
    try:
        if join_state(device) is None:
            Joiner(device, network, cmtrace_logger(device.home / "Windows" / "Logs" / "dsreg.log", "dsreg")).join(
                plan.user.upn, plan.user.password
            )
        state = ClientState.load(device)
        if state is None or not state.installed:
            installer = Installer(device, parse(plan.ccmsetup))
            installer.network = network
            code = installer.run()
            if code != ExitCode.SUCCESS:
                found = _SETUP_FAILED.findall(device.ccmsetup_log_path.read_text(errors="replace"))
                return _failed(name, started, timer, f"ccmsetup exit {code.name}: {found[-1] if found else ''}")
        policy_cycle(device, network)
    except Exception as e:  # one device's failure is a row in the summary, never the fleet's end
        return _failed(name, started, timer, f"{type(e).__name__}: {e}")
    finally:
        device.close_logs()
    return DeviceResult(name, True, time.perf_counter() - started, dict(timer.steps))


@contextmanager
def internet_client(device: Device, network: DeviceNetwork) -> Iterator[tuple[CcmClient, ManagementPoint]]:
    """The installed client as ccmexec starts it on the internet: its state loaded, rotated to the CMG."""
    state = ClientState.load(device)
    if state is None:
        raise RuntimeError("the device has no installed client (no client state)")
    client = CcmClient(device, network, state)
    try:
        mp = rotate_internet_mp(client, [device.ccm_log("LocationServices.log")])
        if mp is None:
            raise RuntimeError("the client has no internet management point")
        yield client, mp
    finally:
        client.close()


def policy_cycle(device: Device, network: DeviceNetwork) -> None:
    """What `ccmexec` does on an internet client after installation: rotate to the CMG, request policy."""
    with internet_client(device, network) as (client, mp):
        PolicyAgent(client).evaluate(mp)


def token_renewal(device: Device, network: DeviceNetwork) -> None:
    """CcmMessaging renewing the CCM token before it expires: a new Entra device token exchanged at CCM_STS
    through the CMG (a fleet run does it far more often than the token's hours of validity would)."""
    with internet_client(device, network) as (client, mp), tracing.operation(device.info.name, tracing.Step.RENEWAL):
        client.renew_token(mp, device.ccm_log("CcmMessaging.log"))


def _failed(name: str, started: float, timer: DeviceTimer, what: str) -> DeviceResult:
    reason = timer.first_refusal or what
    return DeviceResult(name, False, time.perf_counter() - started, dict(timer.steps), reason_key(reason))
