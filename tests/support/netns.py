"""The lab's topology (README, "Networks") in Linux network namespaces (needs root).

One namespace per host, each with its own address and hosts files; two L2 segments (bridges in a
"switch" namespace): `internet` (agent, entra, cmg, pki, connection point) and `internal` (mp,
connection point, pki). Nothing routes between the segments: the connection point is dual-homed with
forwarding off, so an internet host reaches the MP only through CMG -> connection point -> MP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NETWORKS = {"internet": "10.77.1", "internal": "10.77.2"}


@dataclass
class Host:
    name: str
    octet: int
    networks: tuple[str, ...]
    ns: str = ""
    names: list[str] = field(default_factory=list)  # DNS names this host answers to

    def addr(self, network: str | None = None) -> str:
        return f"{NETWORKS[network or self.networks[0]]}.{self.octet}"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class Topology:
    def __init__(self, prefix: str = "cmgl") -> None:
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.hosts: dict[str, Host] = {}

    def add(self, host: Host) -> Host:
        host.ns = f"{self.prefix}-{host.name}"
        self.hosts[host.name] = host
        return host

    def up(self) -> None:
        self.down()
        sh("ip", "netns", "add", self.switch)
        for net in NETWORKS:
            sh("ip", "-n", self.switch, "link", "add", f"br-{net}", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", f"br-{net}", "up")
        for i, host in enumerate(self.hosts.values()):
            sh("ip", "netns", "add", host.ns)
            sh("ip", "-n", host.ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", host.ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
            for j, net in enumerate(host.networks):
                inner, outer = f"{self.prefix}{i}n{j}", f"{self.prefix}{i}s{j}"
                sh(
                    "ip",
                    "link",
                    "add",
                    inner,
                    "netns",
                    host.ns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    outer,
                    "netns",
                    self.switch,
                )
                sh("ip", "-n", self.switch, "link", "set", outer, "master", f"br-{net}", "up")
                sh("ip", "-n", host.ns, "addr", "add", f"{host.addr(net)}/24", "dev", inner)
                sh("ip", "-n", host.ns, "link", "set", inner, "up")
        self._write_etc_hosts()

    def _write_etc_hosts(self) -> None:
        """/etc/netns/<ns>/hosts: `ip netns exec` mounts it over /etc/hosts (for third-party tools)."""
        for host in self.hosts.values():
            d = Path("/etc/netns") / host.ns
            d.mkdir(parents=True, exist_ok=True)
            lines = ["127.0.0.1 localhost"]
            for other in self.hosts.values():
                shared = [n for n in other.networks if n in host.networks]
                if shared and other.names:
                    lines.append(f"{other.addr(shared[0])} {' '.join(other.names)}")
            (d / "hosts").write_text("\n".join(lines) + "\n")

    def reachable(self, host: Host, other: Host) -> str | None:
        """The address `host` can use for `other`, if they share a network."""
        shared = [n for n in other.networks if n in host.networks]
        return other.addr(shared[0]) if shared else None

    def popen(
        self, host: Host, argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("ab") if log else subprocess.DEVNULL
        return subprocess.Popen(
            ["ip", "netns", "exec", host.ns, *argv],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def run(
        self, host: Host, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", host.ns, *argv],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def down(self) -> None:
        for ns in [*(h.ns for h in self.hosts.values()), self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = subprocess.run(["ip", "netns", "add", "cmgl-probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "cmgl-probe"], capture_output=True)
    return probe.returncode == 0
