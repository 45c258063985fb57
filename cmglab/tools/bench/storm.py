"""Section 7: storms of connections that never finish a TLS handshake, against one CMG process, and whether
its memory comes back afterwards (issue 15: once 81 MiB → 2.3 GiB, never returned; issue 20's goal: back
within 10 % of where it started).

Three kinds, `count` connections each, opened as fast as the client can and held until all are open, then
closed: silent (TCP only, no ClientHello), half a ClientHello, a whole ClientHello and nothing after it (the CMG
signs its part of the handshake for each). A real client asks the CMG for its health (a new TLS handshake)
during the storm; the CMG's RSS is sampled while the storm is held and polled afterwards until it is back
within 10 % (or `settle` s pass).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import httpx

from cmglab.runtime.lab import Lab
from cmglab.tools.bench import procinfo
from cmglab.tools.bench.pinned import pids, running
from cmglab.wire import httpclient

KINDS = ("silent", "half ClientHello", "whole ClientHello")
SPARE_FILES = 200


def client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _real_client_ok(lab: Lab) -> bool:
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle)
    try:
        with httpclient.client(ctx=ctx, resolve=lab.resolve(), timeout=10) as c:  # a new TLS handshake
            return c.get(f"{lab.url('cmg')}/_lab/health").status_code == 200
    except httpx.HTTPError:
        return False


def _storm(lab: Lab, pid: int, kind: str, count: int, hello: bytes, settle: float) -> dict[str, Any]:
    port = lab.config.ports.cmg
    start = procinfo.rss_mb(pid)
    payload = {"silent": b"", "half ClientHello": hello[: len(hello) // 2], "whole ClientHello": hello}[kind]
    held: list[socket.socket] = []
    failed = peak = 0.0
    began = time.monotonic()
    for i in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if payload:
                s.sendall(payload)
            held.append(s)
        except OSError:
            failed += 1
        if i % 500 == 0:
            peak = max(peak, procinfo.rss_mb(pid))
    opened_s = time.monotonic() - began
    real_client = _real_client_ok(lab)
    peak = max(peak, procinfo.rss_mb(pid))
    for s in held:
        s.close()
    closed = time.monotonic()
    after = procinfo.rss_mb(pid)
    while after > start * 1.1 and time.monotonic() - closed < settle:
        time.sleep(0.5)
        after = procinfo.rss_mb(pid)
    return {
        "kind": kind,
        "connections": count,
        "refused_or_failed": int(failed),
        "opened_in_s": round(opened_s, 1),
        "real_client_served": real_client,
        "rss_start_mb": start,
        "rss_peak_mb": peak,
        "rss_after_mb": after,
        "after_vs_start": round(after / start, 3),
        "settled_in_s": round(time.monotonic() - closed, 1),
    }


def storm_section(lab: Lab, count: int, nofile: int, settle: float = 60) -> dict[str, Any]:
    count = min(count, nofile - SPARE_FILES)
    hello = client_hello(lab.config.hosts.cmg)
    with running(lab, "pki", "entra", "cmg") as procs:
        pid = pids(procs)["cmg"]
        rows = [_storm(lab, pid, kind, count, hello, settle) for kind in KINDS]
    return {
        "title": f"7. Connection storms against one CMG process ({count:,} connections that never finish a "
        f"TLS handshake)",
        "note": "Each kind opened as fast as one client can, held until all are open, then closed. The CMG keeps "
        "at most CMGLAB_MAX_HANDSHAKES (1,000) connections in their handshake (the oldest is dropped "
        "for a newcomer) and drops any after CMGLAB_TLS_HANDSHAKE_TIMEOUT (10 s); a second after a burst "
        "it collects cycles and trims the C heap. real_client_served: a real client's request answered "
        "while the storm was held. rss_after_mb: polled after the close until within 10 % of the start "
        f"or {settle:g} s (the goal: after_vs_start ≤ 1.1).",
        "columns": list(rows[0]),
        "rows": rows,
    }
