"""The network flow the lab exists to show, on real separate hosts (Linux network namespaces):

internet: agent 10.77.1.10, entra .11, cmg .12, pki .13, connection point .21
internal: mp 10.77.2.20, connection point .21, pki .13 — nothing routes between the two.

The agent cannot open a connection to the MP, the connection point listens on nothing the internet can
reach, and yet the Entra install and registration succeed through CMG -> connection point -> MP, with
exactly seed 001's hops recorded on each service, in order.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools import orchestrate
from cmglab.tools.processes import isolated_lab
from tests.support.netns import Host, Topology, netns_available

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns_available(), reason="needs root and `ip netns` (CI runs as root)"),
]

# service -> (host name in the topology, the network its listeners bind to; None: every address)
PLACEMENT = {
    "pki": ("pki", None),
    "entra": ("entra", "internet"),
    "management-point": ("mp", "internal"),
    "cmg": ("cmg", "internet"),
    "cmg-connection-point": ("cp", "internal"),
}


@dataclass
class Network:
    lab: Lab
    topo: Topology
    hosts: dict[str, Host]
    mapping_dir: Path

    def mapping(self, host: Host) -> Path:
        return self.mapping_dir / f"{host.name}.hosts"

    def env(self, host: Host) -> dict[str, str]:
        return {"CMGLAB_HOSTS_FILE": str(self.mapping(host)), "CMGLAB_LAB_DIR": str(self.lab.dir)}

    def python(self, host: Host, code: str, timeout: float = 60) -> str:
        """Run Python inside `host` (its namespace, its name mapping); returns stdout, fails on error."""
        done = self.topo.run(host, [sys.executable, "-c", code], env=self.env(host), timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def requests(self, service: str, from_host: str) -> list[dict]:
        """A service's recorded requests in the order they arrived, asked from a host that can reach it
        (records are kept in the order requests finish: a streamed reply can finish after the next arrives)."""
        code = (
            f"import httpx,json;from cmglab.tools.processes import LabProcesses;from cmglab.runtime.lab import Lab;"
            f"c=LabProcesses(Lab.load()).client();"
            f"print(json.dumps(c.get('{self.lab.url(service)}/_lab/requests?limit=2000',"
            f"headers={{'Authorization':'Bearer {self.lab.admin_token()}'}}).json()['requests']))"
        )
        return sorted(json.loads(self.python(self.hosts[from_host], code)), key=lambda r: r["started"])


def host_mappings(lab: Lab, topo: Topology, hosts: dict[str, Host]) -> dict[str, list[str]]:
    """Each host's HOST:PORT:ADDR lines: only the names it can reach, at the address it reaches them on."""
    c = lab.config
    names = {
        "entra": [(n, c.ports.entra) for n in c.hosts.entra],
        "cmg": [(c.hosts.cmg, c.ports.cmg), (c.hosts.cmg, c.ports.cmg_connector)],
        "mp": [
            (c.hosts.management_point, c.ports.management_point),
            (c.hosts.management_point, c.ports.management_point_http),
        ],
        "pki": [(c.hosts.pki, c.ports.pki)],
        "cp": [(c.hosts.cmg_connection_point, c.ports.cmg_connection_point)],
    }
    out: dict[str, list[str]] = {}
    for host in hosts.values():
        lines = []
        for other, entries in names.items():
            addr = topo.reachable(host, hosts[other])
            if other == "cp":  # the point's admin listener is on its internal address only
                addr = hosts["cp"].addr("internal") if "internal" in host.networks else None
            if addr:
                lines += [f"{name}:{port}:{addr}" for name, port in entries]
        out[host.name] = lines
    return out


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    base = tmp_path_factory.mktemp("netns")
    lab = isolated_lab(base / "lab")
    topo = Topology("cmglf")
    hosts = {
        h.name: topo.add(h)
        for h in (
            Host("agent", 10, ("internet",)),
            Host("entra", 11, ("internet",), names=list(lab.config.hosts.entra)),
            Host("cmg", 12, ("internet",), names=[lab.config.hosts.cmg]),
            Host("pki", 13, ("internet", "internal"), names=[lab.config.hosts.pki]),
            Host("cp", 21, ("internet", "internal"), names=[lab.config.hosts.cmg_connection_point]),
            Host("mp", 20, ("internal",), names=[lab.config.hosts.management_point]),
        )
    }
    topo.up()
    net = Network(lab, topo, hosts, base / "mappings")
    net.mapping_dir.mkdir()
    for name, lines in host_mappings(lab, topo, hosts).items():
        net.mapping(hosts[name]).write_text("\n".join(lines) + "\n")
    procs = []
    try:
        for service, (host_name, network_name) in PLACEMENT.items():
            host = hosts[host_name]
            bind = host.addr(network_name) if network_name else "0.0.0.0"
            procs.append(
                topo.popen(
                    host,
                    [sys.executable, "-m", "cmglab", "serve", service, "--lab", str(lab.dir)],
                    env={**net.env(host), "CMGLAB_BIND": bind},
                    log=base / f"{service}.out",
                )
            )
        for service, (host_name, _) in PLACEMENT.items():
            net.python(
                hosts[host_name],
                "from cmglab.tools.processes import LabProcesses;"
                "from cmglab.runtime.lab import Lab;"
                f"LabProcesses(Lab.load()).wait_healthy(['{service}'], timeout=60)",
                timeout=90,
            )
        net.python(
            hosts["cmg"],
            "from cmglab.tools.processes import LabProcesses;from cmglab.runtime.lab import Lab;"
            "LabProcesses(Lab.load()).wait_channel(timeout=60)",
            timeout=90,
        )
        yield net
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        topo.down()


CONNECT = (
    "import socket,sys\n"
    "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print('open')\n"
    "except OSError as e: print(type(e).__name__, e.errno)"
)


def connect(net: Network, host: str, addr: str, port: int) -> str:
    done = net.topo.run(net.hosts[host], [sys.executable, "-c", CONNECT, addr, str(port)], timeout=30)
    return done.stdout.strip()


def test_the_agent_cannot_open_a_connection_to_the_mp(network: Network) -> None:
    mp = network.hosts["mp"].addr("internal")
    ports = network.lab.config.ports
    for port in (ports.management_point, ports.management_point_http):
        assert connect(network, "agent", mp, port).startswith("OSError 101")  # network is unreachable
    # and by name: the agent's mapping has no MP, and nothing resolves it
    assert network.lab.config.hosts.management_point not in network.mapping(network.hosts["agent"]).read_text()
    # the connection point itself reaches it (the only way in)
    assert connect(network, "cp", mp, ports.management_point) == "open"


def test_the_connection_point_has_no_listener_the_internet_can_reach(network: Network) -> None:
    listening = network.topo.run(network.hosts["cp"], ["ss", "-ltnH"]).stdout
    local = [line.split()[3] for line in listening.splitlines() if line.strip()]
    assert local, listening
    internal = network.hosts["cp"].addr("internal")
    assert all(a.startswith((f"{internal}:", "127.")) for a in local), local
    cp_internet = network.hosts["cp"].addr("internet")
    assert connect(network, "agent", cp_internet, network.lab.config.ports.cmg_connection_point).startswith(
        "ConnectionRefusedError"
    )
    assert connect(network, "agent", internal, network.lab.config.ports.cmg_connection_point).startswith("OSError 101")


def test_entra_install_and_registration_succeed_through_the_cmg(network: Network, tmp_path: Path) -> None:
    agent = network.hosts["agent"]
    home = str(tmp_path / "device01")
    for argv in orchestrate.device_commands(network.lab, home):
        done = network.topo.run(agent, argv, env=network.env(agent), timeout=240)
        assert done.returncode == 0, f"{argv[0]}: {done.stdout}{done.stderr}"
    registered = Path(home) / "Windows/CCM/Logs/ClientIDManagerStartup.log"
    deadline = time.monotonic() + 30
    while not re.search(
        r"Client is registered\. Server assigned ClientID is GUID:[0-9A-F-]{36}\. Approval status 3",
        registered.read_text() if registered.exists() else "",
    ):
        assert time.monotonic() < deadline, registered.read_text()
        time.sleep(0.3)

    assert_seed_001_hops(network)


ROLE = r"/CCM_Proxy_ServerAuth/\d+"
# seed 001, "Client installation" 1-4 then "Client registration" 2-4, as the CMG sees them
CMG_HOPS = [
    ("GET", r"/CCM_Proxy_ServerAuth/AADAuthInfo"),  # 1. AAD info from the CMG
    ("POST", rf"{ROLE}/CCM_STS"),  # 3. CCM token (Entra device token as proof)
    ("CCM_POST", rf"{ROLE}/ccm_system_tokenauth/request"),  # 4. site information request
    ("GET", rf"{ROLE}/CCM_Client/ccmsetup\.cab"),  # 4. "Checking the URL .../ccmsetup.cab"
    ("CCM_POST", rf"{ROLE}/ccm_system_tokenauth/request"),  # 4. content location request
    ("GET", r"/downloadrestservice\.svc/getcontentxmlsecure"),  # 4. content-enabled CMG
    ("GET", r"/downloadrestservice\.svc/content/\w+/ccmsetup\.cab"),
    ("GET", r"/downloadrestservice\.svc/content/\w+/client\.msi"),
    # registration 2-3: MP_ClientRegistration carrying the fresh Entra token (no CCM_STS before it)
    ("CCM_POST", rf"{ROLE}/ccm_system_tokenauth/request"),
    ("POST", rf"{ROLE}/CCM_STS"),  # registration 4: new CCM token, cached
]
ENTRA_HOPS = [  # seed 002 A-H (dsregcmd /join), then the device tokens ccmsetup and the client ask for
    ("GET", r"/[^/]+/\.well-known/openid-configuration"),
    ("GET", r"/common/userrealm/[^/]+"),
    ("POST", r"/[0-9a-f-]{36}/oauth2/token"),
    ("GET", r"/[^/]+/discover"),
    ("POST", r"/EnrollmentServer/device/"),
]


def matches(records: list[dict], expected: list[tuple[str, str]]) -> bool:
    return len(records) == len(expected) and all(
        r["method"] == m and re.fullmatch(p, r["path"], re.IGNORECASE)
        for r, (m, p) in zip(records, expected, strict=True)
    )


def assert_seed_001_hops(network: Network) -> None:
    lab = network.lab
    cmg = network.requests("cmg", "agent")
    assert matches(cmg, CMG_HOPS), [f"{r['method']} {r['path']}" for r in cmg]
    assert all(r["status"] == 200 for r in cmg)

    # the connection point carried exactly the CMG's proxied requests, rewritten to the MP
    proxied = [r for r in cmg if "/CCM_Proxy_" in r["path"] and "AADAuthInfo" not in r["path"]]
    cp = network.requests("cmg-connection-point", "mp")
    assert [(r["method"], r["path"]) for r in cp] == [(r["method"], r["path"]) for r in proxied]
    mp_url = lab.url("management-point")
    for r in cp:
        internal = re.sub(rf"^{ROLE}", "", r["path"], flags=re.IGNORECASE)
        assert r["rewritten_url"] == f"{mp_url}{internal}", r

    # the MP saw the same requests, each from the connection point's certificate, never from the agent
    mp = [r for r in network.requests("management-point", "cp") if r["path"].lower() != "/ccm_cloud/config"]
    assert [(r["method"], r["path"].lower()) for r in mp] == [
        (r["method"], re.sub(rf"^{ROLE}", "", r["path"], flags=re.IGNORECASE).lower()) for r in cp
    ]
    assert {r["client_cert_subject"] for r in mp} == {lab.pki.connection_point.cert().subject.rfc4514_string()}

    entra = network.requests("entra", "agent")
    assert matches(entra[: len(ENTRA_HOPS)], ENTRA_HOPS), [f"{r['method']} {r['path']}" for r in entra]
    later = {(r["method"], r["path"]) for r in entra[len(ENTRA_HOPS) :]}
    tenant = lab.config.primary_tenant.tenant_id
    # after the join: the user's sign-in for a PRT (user realm, then the device-signed password grant), the
    # device tokens, and the signing keys
    allowed = [
        ("POST", rf"/{tenant}/oauth2/token"),
        ("GET", r"/common/discovery/keys"),
        ("GET", r"/common/userrealm/[^/]+"),
    ]
    assert all(any(m == am and re.fullmatch(ap, path) for am, ap in allowed) for m, path in later), later
