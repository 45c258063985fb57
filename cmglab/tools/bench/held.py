"""Section 5: simultaneous keep-alive client connections held by one CMG process, its memory, and request
latency while they are held (a real CMG VM instance holds 6,000).

Each held connection is what an internet client leaves behind: a mutual-TLS connection (the client
presents its certificate, the CMG checks chain and CRL), one real request on it (AADAuthInfo, which the
CMG answers itself), then idle keep-alive (the CMG keeps idle connections for IIS's 120 s). Latency is
measured on other connections, with none held and then with all held; at the end every held connection
must still answer.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from typing import Any

from cmglab.core.settings import Settings
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import FD_HEADROOM
from cmglab.services.cmg.connector import RESERVED_CONNECTIONS
from cmglab.tools.bench import loadgen, procinfo, scenarios
from cmglab.tools.bench.pinned import LOAD_CPU, SERVER_CPU, pids, running

OPENING = 64  # handshakes in flight while the connections are opened (well under the listen backlog)
LATENCY_CONNECTIONS = 4  # a light load: the latency of a request, not of a queue
SPARE_FILES = 200  # descriptors the bench process keeps for everything else
# the idle keep-alive timeout in this section (CMGLAB_IDLE_TIMEOUT; IIS's and the lab's default is 120 s), given
# to every service the section starts (PKI, MP, CMG, connection point); the CMG's is the one that matters: opening
# 20,000 mutual-TLS connections takes 60-220 s here, and it would close the first ones before the measurement;
# every other section (and every lab) keeps 120 s
HELD_IDLE_TIMEOUT = 900
CMG_SPARE = 16  # the CMG's own other connections: the connection point's channel, the latency connections

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def established(port: int) -> int:
    """ESTABLISHED TCP connections whose local end is `port`: the server's side of its clients' connections."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except FileNotFoundError:
            continue
    return count


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:120] if str(e) else type(e).__name__


async def _exchange(conn: Connection, raw: bytes) -> int:
    reader, writer = conn
    writer.write(raw)
    status, _ = await loadgen.read_response(reader)
    return status


async def _ask(conn: Connection, raw: bytes, failures: Counter[str]) -> int | None:
    """One request on `conn`: its status, or None when the connection failed (counted by reason)."""
    try:
        status = await asyncio.wait_for(_exchange(conn, raw), 30)
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, TimeoutError) as e:
        failures[_reason(e)] += 1
        return None
    if status != 200:
        failures[f"HTTP {status}"] += 1
    return status


async def open_held(target: loadgen.Target, count: int, raw: bytes) -> tuple[list[Connection], Counter[str]]:
    """`count` connections, each with one answered request; failures counted by reason."""
    gate = asyncio.Semaphore(OPENING)
    failures: Counter[str] = Counter()

    async def one() -> Connection | None:
        async with gate:
            try:
                conn = await asyncio.open_connection(
                    target.addr, target.port, ssl=target.ctx, server_hostname=target.host
                )
            except (OSError, ssl.SSLError, TimeoutError) as e:
                failures[_reason(e)] += 1
                return None
            return conn if await _ask(conn, raw, failures) is not None else None

    opened = await asyncio.gather(*(one() for _ in range(count)))
    return [c for c in opened if c is not None], failures


async def still_answering(conns: list[Connection], raw: bytes) -> tuple[int, Counter[str]]:
    """One more request on every held connection: how many were still there and answered 200."""
    gate = asyncio.Semaphore(OPENING)
    failures: Counter[str] = Counter()

    async def one(conn: Connection) -> bool:
        async with gate:
            return await _ask(conn, raw, failures) == 200

    answered = await asyncio.gather(*(one(c) for c in conns))
    return sum(answered), failures


async def _latency(lab: Lab, label: str, duration: float) -> list[dict[str, Any]]:
    location = next(s for s in scenarios.through_cmg(lab) if s.direct == scenarios.MP_LOCATION)
    aad = scenarios.aad_auth_info(lab)
    rows = []
    for name, target, request in (
        ("AADAuthInfo (answered by the CMG)", location.target, aad),
        ("location request (CMG -> CP -> MP)", location.target, location.request),
    ):

        def repeat(_i: int, r: loadgen.Request = request) -> loadgen.Request:
            return r

        result = await loadgen.run(name, target, repeat, connections=LATENCY_CONNECTIONS, duration=duration)
        rows.append({"held": label, **result.summary()})
    return rows


async def _measure(lab: Lab, cmg_pid: int, count: int, duration: float) -> dict[str, Any]:
    holder = scenarios.cmg_mutual_target(lab)
    raw = scenarios.aad_auth_info(lab).encode(holder.authority, keepalive=True)
    latency = await _latency(lab, "0", duration)
    rss_before = procinfo.rss_mb(cmg_pid)
    started = time.perf_counter()
    conns, open_failures = await open_held(holder, count, raw)
    open_seconds = time.perf_counter() - started
    at_cmg = established(holder.port)
    rss_held = procinfo.rss_mb(cmg_pid)
    latency += await _latency(lab, f"{len(conns):,}", duration)
    answered, later_failures = await still_answering(conns, raw)
    rss_after = procinfo.rss_mb(cmg_pid)
    for _, writer in conns:
        writer.close()
    growth = rss_held - rss_before
    # per connection the CMG still holds: it closes one idle for 120 s (IIS's timeout), so when opening takes
    # longer than that the first ones are gone and len(conns) would flatter it
    held_at_cmg = min(at_cmg, len(conns))
    return {
        "summary": {
            "target": count,
            "held": len(conns),
            "open_failures": sum(open_failures.values()),
            "open_seconds": round(open_seconds, 1),
            "opened_per_s": round(len(conns) / open_seconds, 1) if open_seconds else 0,
            "established_at_cmg": at_cmg,
            "still_answering": answered,
            "cmg_rss_before_mb": rss_before,
            "cmg_rss_held_mb": rss_held,
            "cmg_rss_after_mb": rss_after,
            "kb_per_connection": round(growth * 1024 / held_at_cmg, 1) if held_at_cmg else 0,
            "cmg_peak_rss_mb": procinfo.peak_rss_mb(cmg_pid),
        },
        "failures": [{"when": "opening", "reason": r, "connections": n} for r, n in open_failures.items()]
        + [{"when": "final request", "reason": r, "connections": n} for r, n in later_failures.items()],
        "latency": latency,
    }


def files_needed(target: int) -> int:
    """The open-files limit with which `target` connections can really be held: the CMG's (its own descriptors,
    its connector's reserve, the latency connections) and the bench's, which holds the client ends."""
    cmg = target + FD_HEADROOM + RESERVED_CONNECTIONS + LATENCY_CONNECTIONS + CMG_SPARE
    return max(cmg, target + SPARE_FILES)


def connections_section(lab: Lab, target: int, duration: float, nofile: int) -> dict[str, Any]:
    # the bench process holds the client ends; the CMG (same hard limit) keeps FD_HEADROOM for itself and
    # RESERVED_CONNECTIONS for its connector, and must still take the latency runs' connections
    cmg_room = nofile - FD_HEADROOM - RESERVED_CONNECTIONS - LATENCY_CONNECTIONS - CMG_SPARE
    count = min(target, nofile - SPARE_FILES, cmg_room)
    # the CMG's own cap (CMGLAB_MAX_CONNECTIONS, 20,000 by default) must take the latency runs' connections too
    cap = max(Settings().max_connections, count + LATENCY_CONNECTIONS + CMG_SPARE)
    env = {"CMGLAB_IDLE_TIMEOUT": str(HELD_IDLE_TIMEOUT), "CMGLAB_MAX_CONNECTIONS": str(cap)}
    with running(lab, "pki", "management-point", "cmg", "cmg-connection-point", env=env) as procs:
        cmg_pid = pids(procs)["cmg"]
        result = asyncio.run(_measure(lab, cmg_pid, count, duration))
    s = result["summary"]
    limited = (
        f" The target was {target:,}; RLIMIT_NOFILE here ({nofile:,}, for the bench and the CMG, which keeps "
        f"{FD_HEADROOM} descriptors for itself and {RESERVED_CONNECTIONS} connections for its connector) allowed "
        f"{count:,}: holding {target:,} needs a limit of {files_needed(target):,}, and this process may not raise "
        f"its hard limit (no CAP_SYS_RESOURCE; /proc/sys/fs/nr_open is {procinfo.nr_open():,})."
        if count < target
        else f" RLIMIT_NOFILE: {nofile:,} (the bench raises it for the target where the system allows)."
    )
    return {
        "title": f"5. Keep-alive client connections held by one CMG process (target {target:,})",
        "note": f"Mutual-TLS connections (client certificate, CRL checked), one AADAuthInfo request each, then "
        f"idle keep-alive; opened {OPENING} at a time. established_at_cmg counts the CMG's "
        f"ESTABLISHED sockets on its client port (/proc/net/tcp); still_answering: held connections "
        f"that answered one more request after the latency runs. kb_per_connection: the CMG's RSS "
        f"growth per connection the CMG holds (min of held and established_at_cmg: a connection the CMG closed "
        f"is never counted). Every service of this section (PKI, MP, CMG, connection point) runs with "
        f"CMGLAB_IDLE_TIMEOUT={HELD_IDLE_TIMEOUT} s here (IIS's and the lab's default: 120 s) so that opening "
        f"does not outlast the CMG's (the one holding the connections), and the CMG's CMGLAB_MAX_CONNECTIONS at "
        f"{cap:,}. Latency: "
        f"{LATENCY_CONNECTIONS} other keep-alive connections, "
        f"{duration:g} s per request kind, with none and with {s['held']:,} held. CMG, connection "
        f"point and MP on CPU {SERVER_CPU}, client on CPU {LOAD_CPU}.{limited}",
        "columns": list(s),
        "rows": [s],
        "tables": [
            {
                "title": "Request latency while the connections are held",
                "columns": ["held", "name", "requests", "errors", "rps", "p50_ms", "p95_ms", "p99_ms"],
                "rows": result["latency"],
            },
            {"title": "Failures", "columns": ["when", "reason", "connections"], "rows": result["failures"]},
        ],
    }
