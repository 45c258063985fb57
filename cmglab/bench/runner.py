"""`cmglab bench`: measurements, not timed tests. The server under test is pinned to CPU 0 and the
load generator to CPU 1 (when the machine has two), so the numbers say what one service core does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cmglab.bench import loadgen, scenarios
from cmglab.processes import LabProcesses
from services.runtime import httpclient
from services.runtime.lab import Lab

SERVER_CPU, LOAD_CPU = 0, 1


def pin_command(argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(SERVER_CPU), *argv] if (os.cpu_count() or 1) > 1 else argv


def pin_self() -> None:
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CPU})


def wait_port(addr: str, port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((addr, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{addr}:{port} did not open")


def transport_ceiling(lab: Lab, port: int, duration: float, connections: int) -> dict[str, Any]:
    """Section 1: a trivial endpoint on the same runtime: keep-alive and one new handshake per request."""
    proc = subprocess.Popen(pin_command([sys.executable, "-m", "cmglab.bench.ceiling", "--lab", str(lab.dir),
                                         "--port", str(port)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
        client = lab.pki.issue_client("bench-client")
        ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=(client.cert_path, client.key_path))
        target = loadgen.Target("127.0.0.1", port, lab.config.hosts.cmg, ctx)
        rows = []
        for name, keepalive in (("keep-alive", True), ("new TLS handshake per request", False)):
            result = asyncio.run(loadgen.run(name, target, lambda _i: loadgen.Request(path="/ping"),
                                             connections=connections, duration=duration, keepalive=keepalive))
            rows.append(result.summary())
    finally:
        proc.terminate()
        proc.wait(10)
    return {"title": "1. Transport ceiling (uvicorn + TLS runtime, client certificate required, CRL on)",
            "note": f"{connections} concurrent connections, {duration:.0f} s each; server on CPU {SERVER_CPU}, "
                    f"load generator on CPU {LOAD_CPU}.",
            "columns": ["name", "requests", "errors", "rps", "p50_ms", "p95_ms", "p99_ms"], "rows": rows}


def _measure(chosen: list[scenarios.Scenario], duration: float, connections: int) -> list[dict[str, Any]]:
    rows = []
    for s in chosen:
        def repeat(_i: int, request: loadgen.Request = s.request) -> loadgen.Request:
            return request

        result = asyncio.run(loadgen.run(s.name, s.target, repeat, connections=connections, duration=duration))
        rows.append(result.summary())
    return rows


def services_sections(lab: Lab, ceiling_rps: float, duration: float, connections: int) -> dict[str, Any]:
    """Sections 2 and 3: each service's hot endpoint alone against the ceiling, and the CMG path
    against the same request sent to the MP directly."""
    procs = LabProcesses(lab, prefix=pin_command([]))
    procs.ensure("pki", "entra", "management-point", "cmg", "cmg-connection-point")
    try:
        alone = _measure([scenarios.entra_token(lab), *scenarios.mp_direct(lab)], duration, connections)
        for row in alone:
            row["ratio_to_ceiling"] = round(row["rps"] / ceiling_rps, 3) if ceiling_rps else 0
        via_cmg = _measure(scenarios.through_cmg(lab), duration, connections)
        for direct, proxied in zip(alone[1:], via_cmg, strict=True):
            proxied["ratio_to_mp_direct"] = round(proxied["rps"] / direct["rps"], 3) if direct["rps"] else 0
    finally:
        procs.stop_all()
    columns = ["name", "requests", "errors", "rps", "p50_ms", "p95_ms", "p99_ms"]
    return {
        "services": {"title": "2. Hot endpoints, each service alone (ratio to the keep-alive ceiling)",
                     "note": "Keep-alive connections; every service process pinned to the server CPU.",
                     "columns": [*columns, "ratio_to_ceiling"], "rows": alone},
        "cmg_path": {"title": "3. Through the CMG: client -> CMG -> channel -> connection point -> MP",
                     "note": "The same requests as section 2, ratio to the MP answering directly. "
                             "CMG, connection point and MP share the server CPU.",
                     "columns": [*columns, "ratio_to_mp_direct"], "rows": via_cmg},
    }


def run(lab: Lab, out_dir: Path, *, duration: float, connections: int, port: int) -> tuple[Path, Path]:
    from cmglab.bench import report

    pin_self()
    sections: dict[str, Any] = {"ceiling": transport_ceiling(lab, port, duration, connections)}
    ceiling_rps = sections["ceiling"]["rows"][0]["rps"]
    sections.update(services_sections(lab, ceiling_rps, duration, connections))
    return report.write(out_dir, sections)
