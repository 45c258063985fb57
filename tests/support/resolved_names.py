"""Run unmodified third-party clients (MSAL, roadtx) against the lab under the real Entra names.

Those clients resolve names with the system resolver and reach Entra on port 443, so:
- a second Entra process of the same lab (same store, same PKI) listens on <loopback alias>:443
  (`CMGLAB_BIND` / `CMGLAB_LISTEN_PORT`);
- the client runs in its own mount namespace (`unshare --mount`) where a generated hosts file is
  bind-mounted over /etc/hosts, mapping the Entra names to that alias. Nothing on the machine changes.
Needs root (CI runs the tests as root).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from cmglab.wire import httpclient

PORT = 443


def namespaces_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "--fork", "true"], capture_output=True).returncode == 0


def free_loopback_alias(port: int = PORT) -> str:
    """A 127.x.y.z address whose `port` is free (every 127/8 address is local on Linux)."""
    for _ in range(50):
        addr = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((addr, port))
            except OSError:
                continue
        return addr
    raise RuntimeError(f"no loopback alias with port {port} free")


@dataclass
class AliasedEntra(LabProcesses):
    """The lab's Entra service once more, on <addr>:443 (health checked there)."""

    addr: str = "127.0.0.1"

    def health_url(self, name: str) -> str:
        return f"https://{self.lab.host(name)}/_lab/health"

    def client(self, resolve: Iterable[str] = ()) -> httpx.Client:  # names on port 443: its own mapping
        ctx = httpclient.ssl_context(ca_bundle=self.lab.pki.ca_bundle)
        return httpclient.client(
            ctx=ctx, resolve=[f"{h}:{PORT}:{self.addr}" for h in self.lab.config.hosts.entra], timeout=5
        )


@contextmanager
def entra_on_443(lab: Lab) -> Iterator[str]:
    """Start Entra on a loopback alias's port 443; yields the alias address."""
    addr = free_loopback_alias()
    procs = AliasedEntra(lab, env={"CMGLAB_BIND": addr, "CMGLAB_LISTEN_PORT": str(PORT)}, addr=addr)
    procs.start("entra")
    try:
        yield addr
    finally:
        procs.stop_all()


def write_hosts(path: Path, addr: str, names: Sequence[str]) -> Path:
    path.write_text(f"127.0.0.1 localhost\n{addr} {' '.join(names)}\n")
    return path


def run_resolved(
    argv: Sequence[str],
    *,
    hosts: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` with `hosts` as its /etc/hosts (private mount namespace)."""
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts), *argv],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
