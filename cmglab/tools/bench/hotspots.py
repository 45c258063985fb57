"""Section 6: where the hot endpoints spend their time (py-spy on the service processes while the load
generator drives them), and what the fixes made of it: the "before" numbers are static, measured on this
machine before each change; "after" is this run's row for the same scenario (sections 2 and 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmglab.runtime.lab import Lab
from cmglab.tools.bench import floor, loadgen, profile, scenarios
from cmglab.tools.bench.pinned import CpuMeter

CMG_PATH = ("cmg", "cmg-connection-point", "management-point")
# what the profiles and the CPU split per request showed (sections 2, 3 and the tables below)
FINDINGS = (
    "What the profiles show, and what the rounds of fixes (the table below) changed. The CMG path: a request through "
    "the CMG is served by three processes on the one server core (the CMG: TLS, llhttp, the client's "
    "authentication, one channel frame each way; the connection point: the frame, the URL rewrite, its two required "
    "SMS-trace lines, HTTPS to the MP; then the MP), so its ratio to the MP alone cannot pass mp_direct_cpu_ms / "
    "server_cpu_ms; for a cheap MP request (location) 0.7 is out of reach, its floor through the CMG (two more "
    "keep-alive hops and the CMG's check) being over twice its floor alone (section 1's tables). The CMG's and "
    "the connection point's largest frames are the sends that wake the next "
    "process (the channel frame, the request to the MP), inflated by the wall-clock samples; the connection point "
    "took ~4 ms per request in httpx before its own HTTP/1.1 client on llhttp and uvloop's TLS, and the CMG ~2 ms "
    "on h11, Starlette's middleware and wsproto's three messages each way before its lean path, llhttp and one "
    "frame each way. Entra ROPC: its two RSA signatures (access and ID token) are over half of its samples and the "
    "1,000-round PBKDF2 a fifth (at 20,000 rounds PBKDF2 was ~60 % of 10.7 ms). The MP: the token signature (CCM_STS, "
    "registration) and otherwise many small items, each a few per cent: the HTTP layer on the event loop, the lean "
    "path's wrappers, the request record and span, the seeds' log lines, the SQLite writes the endpoint needs, the "
    "hop to a worker thread that keeps signatures and parsing off the event loop. A verified CCM token, a "
    "MutualAuth certificate's identity and a PayloadSignature are remembered where the protocol allows (a "
    "signature per issued token cannot be); README 'Where the rest goes' itemises the rest."
)
# Section 5's memory per idle keep-alive mutual-TLS connection at the CMG (issue 20: <= 32 KB): what each kept change
# did, measured by hand (/tmp scripts around the bench's held.open_held: the CMG alone on CPU 0, its RSS before and
# after 2,000 held connections; the request log's 2,000 records, bounded, are in both columns)
MEMORY_BEFORE = "2,000 held, the CMG's RSS growth per connection, the commit before vs the change, load average 12-20"
STORM_BEFORE = (
    "section 7 alone (silent kind, 5,000 connections): the CMG's RSS after the storm less its start, per storm "
    "connection; main and the commits since 08396d1 (6 runs) vs the change (3 runs), load average 17-40"
)
HELD_20K = "section 5 alone, target 20,000 (19,680 and 19,660 held), the commit before vs the change, load 12-24"
IDLE_BEFORE = (
    "2,000 held (the bench's open_held, mutual TLS, one AADAuthInfo each), the CMG in a process of its own with "
    "CMGLAB_IDLE_TIMEOUT=900, its RSS growth per connection: main 228e12f vs the change, load average 16-20"
)
SHARED_BEFORE = (
    "2,000 held (the bench's open_held, mutual TLS, one AADAuthInfo each), the CMG in a process of its own with "
    "CMGLAB_IDLE_TIMEOUT=900, its RSS growth per connection: main 18fc97c (4 runs: 45.37, 45.37, 45.37, 45.79) vs "
    "the change (2 runs: 45.17, 45.22; the anonymous mappings, where Python's small objects are, 10.09-10.20 -> "
    "9.87-9.88 KB), load average 6-12"
)
MEMORY_FIXES: tuple[tuple[str, float, float, str], ...] = (
    (
        "the finished request's scope and headers let go once its reply is out; the TLS extension's PEM chain "
        "built when read; the parsed client certificate and its names cached per certificate (LRU) instead of per "
        "connection; uvicorn's duplicate keep-alive timer cancelled (cmglab/runtime/tls.py, certinfo.py, admin.py, "
        "limits.py)",
        59.4,
        52.3,
        MEMORY_BEFORE,
    ),
    ("h11: the finished request's cycle let go too (cmglab/runtime/tls.py)", 52.3, 50.7, MEMORY_BEFORE),
    ("the same, at a 20,000 target", 51.4, 50.1, HELD_20K),
    (
        "after a storm of connections that never send a ClientHello (section 7's silent kind): httptools' parser "
        "made when the connection is made, not with the protocol; it holds the protocol's callbacks, so every "
        "silent connection's protocol waited for the cyclic collector and was freed among survivors in Python's "
        "allocator arenas, never given back (since the CMG's client listener moved from h11 to the any-method "
        "llhttp protocol, 08396d1). RSS after / start 1.127-1.156 -> 1.064-1.066, not settled in 20-60 s -> "
        "settled in 2.0 s (cmglab/runtime/tls.py)",
        2.1,
        1.0,
        STORM_BEFORE,
    ),
    (
        "an idle keep-alive connection keeps no copy of its certificate: uvloop's peer-certificate dictionary and "
        "the ASGI TLS extension's fields read from the SSL object when asked (renegotiation off: the handshake's); "
        "httptools' finished cycle let go once llhttp completed its message; uvicorn's per-connection Event and "
        "pipeline deque replaced; the head and idle timeouts by slots of time, one loop timer per slot instead of "
        "one per connection (cmglab/runtime/tls.py, idle.py, limits.py)",
        52.3,
        45.4,
        IDLE_BEFORE,
    ),
    (
        "the cipher uvloop keeps per connection and the listener's address uvicorn keeps per connection: one shared "
        "copy each (cmglab/runtime/tls.py)",
        45.5,
        45.2,
        SHARED_BEFORE,
    ),
)
# what the rest is (/work/notes/perfmem.md, perfmem2.md and mem9.md have the measurements)
MEMORY_SPLIT = (
    "Where an idle mutual-TLS 1.3 connection's memory is (CMG, 2,000 held, measured by hand, /work/notes/mem9.md): "
    "45.4 KB of RSS = 35.3 KB of malloc heap + 10.1 KB of anonymous mappings; glibc holds no free heap worth "
    "giving back (0.5 MB free of 93 MB after the burst; malloc_trim returns nothing). OpenSSL 3.0 alone keeps "
    "32.6 KB of heap (30.5 KB asked for in 208 blocks, OpenSSL's own allocator hooks by source line, the CMG's "
    "context): the SSL object 7.6 KB; uvloop's two memory BIOs' buffers, the size of the largest flight each "
    "carried and never shrunk, 6.8 KB (3.2 the client's certificate flight, 3.5 the server's); the client's "
    "certificate and issuing CA as it sent them, parsed (the leaf in the session, the CA in its peer chain) ~9.5 KB "
    "(5.7 KB of heap per parsed X509); both directions' AES-GCM keys 2.3 KB; the session 0.9 KB; the handshake hash "
    "0.6 KB; both key shares 0.7 KB; the rest (certificate and verify settings, sigalgs, locks) ~2 KB. Not there: "
    "record buffers (CPython sets SSL_MODE_RELEASE_BUFFERS), cached sessions (stateless tickets; num_tickets 0 "
    "changes nothing), CRL state (the same without the CRL check). With uvloop's 256 KiB read buffer (1 resident "
    "page, 4 KB) that is 36.6 KB before any Python object: the 32 KB goal is below what this TLS stack keeps. "
    "Python's part (~9 KB): uvicorn's protocol (its instance dictionary 1.6 KB: it has 51 attributes, and past "
    "some 20 Python gives it a 128-slot table), the llhttp parser with its bound callbacks (~0.9 KB), uvloop's SSL "
    "protocol and transport, the runtime's per-connection objects."
)
MIN_SECONDS = 3.0  # fewer samples than this say little
ONBOARDING = "whole onboarding (section 4, smallest fleet): the devices' CPU"
ONBOARDING_SERVICES = "whole onboarding (section 4, smallest fleet): the services' CPU"


@dataclass(frozen=True)
class Fix:
    scenario: str  # the row name in section 2 or 3
    change: str
    process: str  # the service process the change is in
    rps: float
    p50_ms: float | None
    server_cpu_ms: float  # every service process, per request
    process_cpu_ms: float  # `process` alone, per request
    before: str = ""  # how "before" was measured (BEFORE when empty)
    # a section 4 row: rps = onboardings/s, cpu = the devices' CPU per onboarding (ONBOARDING_SERVICES: the
    # services', `process` one service's)
    onboarding: bool = False


# Before each change, on this 2-CPU machine (shared with other work): the bench's scenarios (16 keep-alive
# connections, 8 s), the mean of two runs interleaved with two of the changed code, on commit 1dc448f's tree
# with the change reverted.
BEFORE = "1dc448f with the change reverted, 16 connections, 8 s, mean of 2 runs"
# the machine shared by several engineers (load average 18-22 on 2 CPUs): CPU per request is the steadier number
TOKEN_CACHE_BEFORE = (
    "the token cache's commit reverted, 16 connections, 3 s, mean of 2 runs interleaved with 2 of "
    "the change, load average 18-22"
)  # the CMG path's changes: ab runs of the two section 3 scenarios (CMG, CP, MP pinned to CPU 0; the load on CPU 1)
CHANNEL_BEFORE = (
    "main a51fceb (three frames each way), 16 connections, 5 s, mean of 2 runs interleaved with 2 of the "
    "change, load average 7.5-13"
)
CMG_AUTH_BEFORE = (
    "main e1be942 (identity checked per request), 16 connections, 5 s, mean of 2 runs interleaved with 2 of "
    "the change, load average 12.8-15.3"
)
CMG_FRONT_BEFORE = (
    "main 0ebbee8 (the CMG's URLs through FastAPI's router and middleware), 16 connections, 8 s, mean of 3 runs "
    "interleaved with 3 of the change, load average 10.8-21.6"
)
CMG_PARSER_BEFORE = (
    "main 7a0b9ff (the CMG's client listener on uvicorn's h11 protocol), 16 connections, 8 s, mean of 3 runs "
    "interleaved with 3 of the change, load average 10-22.5 (one base run at load 22 inflated: CMG 0.93 and 0.91)"
)
CP_CLIENT_BEFORE = (
    "main 228e12f (the connection point's MP client on h11 over asyncio streams), 16 connections, 8 s, mean of 3 "
    "runs interleaved with 3 of the change, load average 13-20 (the change's location runs 2 and 3, at load 13-20, "
    "inflated in all three processes: MP 1.46 and 1.39 ms against 0.94)"
)
CP_TRIMS_BEFORE = (
    "main 638afae (a rewrite per request), 16 connections, 8 s, mean of 4 runs interleaved with 4 of the change, "
    "load average 27-43: every process's CPU per request 2-3x an idle machine's, so compare the CP's CPU per MP CPU "
    "in the change's text (the MP's code the same in both)"
)
SMS_TRACE_BEFORE = (
    "main 0ce75f4's tree (SMS-trace lines through logging's LogRecord path), 16 connections, 8 s, mean of 3 runs "
    "interleaved with 2 of the change (a third failed to start at load 36), load average 33-36: every process's "
    "CPU per request ~3x an idle machine's, so compare the CP's CPU per CMG CPU in the change's text (the CMG "
    "writes no per-request SMS-trace line)"
)
CMG_TRIMS_BEFORE = (
    "main ed1bb6d (the connector's WebSocket on uvicorn's wsproto protocol, a timer per channel frame, the route "
    "read per request), 16 connections, 8 s, mean of 7 runs interleaved with 7 of the change, load average 11-21: "
    "every process's CPU per request 1.5-2x an idle machine's and swinging with the load, so compare the CMG's CPU "
    "per MP CPU in the change's text (the MP's code the same in both; every run of the change below every run of "
    "main). The WebSocket protocol alone, 3+3 runs, load 14-17: CMG / MP 0.429 -> 0.403 (CCM_STS), 0.776 -> 0.744 "
    "(location); in-process, a 3 KB masked frame received 20-23 us (wsproto) -> 4.5 us, sent 4.4 -> 1.2 us"
)
# the CMG's CPU per onboarding (issue 20, perfcmg5): section 4's fleet_run alone (200 devices, concurrency 16, the
# bench's key pool, fresh services pinned to CPU 0, the fleet on CPU 1), the commit before vs the change interleaved
CMG_JWT_BEFORE = (
    "main 17c1ccc + gc.freeze, 200 devices, concurrency 16, mean of 2 runs interleaved with 2 of the change (after: "
    "16.8 and 16.6 ms of CMG CPU per onboarding), load average 13-16; in-process, a 1.3 KB token: PyJWT's header "
    "60.7 us -> 16.5 us, header and unverified claims 132.5 -> 19.4 us"
)
CMG_CONTENT_BEFORE = (
    "main 17c1ccc + gc.freeze + the JWT peek, 200 devices, concurrency 16, mean of 2 runs interleaved with 2 of the "
    "change (after: 15.0 and 14.1 ms of CMG CPU per onboarding), load average 14-16"
)
# the agent's TLS session cache (issue 20, tlsresume): section 4's fleet_run alone, main 4ff9550 vs the change
TLS_RESUME_BEFORE = (
    "main 4ff9550 (every agent connection a full TLS handshake), section 4 alone, 200 devices, concurrency 16, mean "
    "of 4 runs interleaved with 4 of the change (services 77.4, 66.7, 77.5, 65.3 -> 69.6, 70.3, 75.0, 63.0 ms; "
    "Entra 28.9 -> 27.8, CMG 16.6 -> 16.1, the MP, unchanged, 16.1 -> 15.8; devices 72.1 -> 74.4 ms, within the "
    "runs' spread), load average 13.9-22.3; in one process, 100 onboardings with the cache and 100 without, "
    "alternating (load 16-18): Entra 36.8 -> 35.3, CMG 24.1 -> 23.8, all services 92.4 -> 92.6, devices 80.1 -> "
    "80.8 ms; the device's CPU in new connections (H1Transport._connect: TCP, TLS, the revocation check) 16.5 -> "
    "15.1 ms per onboarding (6 TLS connections, 3 of them resumed; 40 + 40 alternating, load 18). In-process (thread "
    "CPU, TLS 1.3, the CMG's certificate): a full handshake costs the server 1.0-1.1 "
    "ms and the client 1.2-1.3 ms, a resumed one 0.45 and 0.4 ms (mutual TLS: server 1.7-2.5 -> 1.0-1.15 ms)"
)
FIXES = (
    Fix(
        ONBOARDING_SERVICES,
        "agent: TLS sessions resumed as Windows' Schannel client cache does (per verified name, port and client "
        "certificate, 10 h): an onboarding's full handshakes at Entra 4 -> 2 (+2 resumed), at the CMG 2 -> 1 (+1 "
        "resumed) (cmglab/wire/tls_sessions.py, h1transport.py, agent/network.py); a protocol-fidelity change whose "
        "gain is ~1 ms of Entra CPU and ~0.5 ms of the CMG's per onboarding, near the fleet's noise",
        "entra",
        rps=4.66,
        p50_ms=None,
        server_cpu_ms=71.7,
        process_cpu_ms=28.9,
        before=TLS_RESUME_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "CMG (and the MP's site and Entra token checks): a token's unverified header and claims read once by a "
        "regular expression and base64 instead of PyJWT's per-character scan, three to four times per token (the "
        "same tokens accepted, PyJWT's own error for any other; jwt.decode still verifies) (cmglab/wire/jwt_peek.py"
        ", services/cmg/auth.py, wire/site_tokens.py, wire/entra_tokens.py)",
        "cmg",
        rps=6.89,
        p50_ms=None,
        server_cpu_ms=77.2,
        process_cpu_ms=17.75,
        before=CMG_JWT_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "CMG content: a package file of up to 256 KB answered from memory with FileResponse's own headers (read "
        "again when its inode, mtime or size changes), instead of four thread-pool round trips (stat, open, read, "
        "close) and a task group per download; HEAD, ranges and large files still by FileResponse "
        "(cmglab/services/cmg/content.py, app.py)",
        "cmg",
        rps=7.51,
        p50_ms=None,
        server_cpu_ms=74.2,
        process_cpu_ms=16.7,
        before=CMG_CONTENT_BEFORE,
        onboarding=True,
    ),
    Fix(
        "Entra token (ROPC, v1)",
        "PBKDF2 rounds 20,000 -> 1,000 (cmglab/services/entra/store.py)",
        "entra",
        rps=90.5,
        p50_ms=170.3,
        server_cpu_ms=10.69,
        process_cpu_ms=10.69,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "connection point: its own HTTP/1.1 client on the event loop's TLS "
        "instead of httpx, a small request in one write (cmglab/services/cmg_connection_point/upstream.py)",
        "cmg-connection-point",
        rps=77.9,
        p50_ms=179.3,
        server_cpu_ms=12.72,
        process_cpu_ms=4.41,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same",
        "cmg-connection-point",
        rps=89.9,
        p50_ms=149.2,
        server_cpu_ms=10.23,
        process_cpu_ms=3.93,
    ),
    Fix(
        "MP location request (ccm_system_tokenauth)",
        "CCM tokens verified once, then known by their text: no RSA "
        "verification and no thread hop on a repeat (cmglab/wire/site_tokens.py VerifiedTokens)",
        "management-point",
        rps=530.8,
        p50_ms=25.98,
        server_cpu_ms=1.33,
        process_cpu_ms=1.33,
        before=TOKEN_CACHE_BEFORE,
    ),
    Fix(
        "MP policy assignments (signed request)",
        "the same (the CCM token of a tokenauth request)",
        "management-point",
        rps=215.8,
        p50_ms=65.9,
        server_cpu_ms=3.46,
        process_cpu_ms=3.46,
        before=TOKEN_CACHE_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same, at the CMG's ServerAuth check and the MP",
        "cmg",
        rps=155.0,
        p50_ms=83.3,
        server_cpu_ms=4.02,
        process_cpu_ms=1.56,
        before=TOKEN_CACHE_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "CMG channel version 2: a small request and its reply each in one frame, not head + body + end "
        "(cmglab/wire/cmg_channel.py); the CMG answers a whole reply without streaming (CMG + CP 2.41 -> 1.89 ms)",
        "cmg",
        rps=132.0,
        p50_ms=100.1,
        server_cpu_ms=5.84,
        process_cpu_ms=1.50,
        before=CHANNEL_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same (CMG + CP 2.03 -> 1.42 ms)",
        "cmg",
        rps=267.4,
        p50_ms=53.7,
        server_cpu_ms=3.33,
        process_cpu_ms=1.23,
        before=CHANNEL_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "CMG: a MutualAuth certificate's identity worked out once per certificate, not per request "
        "(cmglab/services/cmg/auth.py; CMG 1.26 -> 0.97 ms)",
        "cmg",
        rps=111.0,
        p50_ms=101.9,
        server_cpu_ms=5.77,
        process_cpu_ms=1.26,
        before=CMG_AUTH_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "CMG: a known site token without re-reading its JWT header (CMG 0.78 -> 0.73 ms)",
        "cmg",
        rps=320.2,
        p50_ms=44.1,
        server_cpu_ms=2.70,
        process_cpu_ms=0.78,
        before=CMG_AUTH_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "CMG: its URLs served as plain ASGI past FastAPI's router and middleware (the recorder, the error handler "
        "and the 500 kept; now cmglab/runtime/fastpath.py); asyncio.timeout, not wait_for, per channel frame and "
        "MP read (CMG 0.94 -> 0.76, CP 0.69 -> 0.64 ms)",
        "cmg",
        rps=166.6,
        p50_ms=80.0,
        server_cpu_ms=4.59,
        process_cpu_ms=0.94,
        before=CMG_FRONT_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same (CMG 0.77 -> 0.63, CP 0.59 -> 0.58 ms)",
        "cmg",
        rps=305.3,
        p50_ms=45.9,
        server_cpu_ms=2.78,
        process_cpu_ms=0.77,
        before=CMG_FRONT_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "CMG: the client listener on llhttp (the any-method protocol, cmglab/runtime/anyverb.py, as the MP's) "
        "instead of h11 (CMG 0.83 -> 0.60 ms, CMG + CP 1.55 -> 1.20 ms)",
        "cmg",
        rps=121.7,
        p50_ms=138.0,
        server_cpu_ms=4.27,
        process_cpu_ms=0.83,
        before=CMG_PARSER_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same (CMG 0.72 -> 0.50 ms, CMG + CP 1.30 -> 1.03 ms)",
        "cmg",
        rps=238.5,
        p50_ms=126.2,
        server_cpu_ms=2.34,
        process_cpu_ms=0.72,
        before=CMG_PARSER_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "connection point: its MP client reads replies with llhttp (httptools) on an asyncio protocol of its own and "
        "writes requests by hand with h11's checks, instead of h11 over asyncio streams "
        "(cmglab/services/cmg_connection_point/upstream.py; CP 0.75 -> 0.55 ms, CP / MP 0.26 -> 0.19)",
        "cmg-connection-point",
        rps=129.2,
        p50_ms=107.2,
        server_cpu_ms=4.33,
        process_cpu_ms=0.75,
        before=CP_CLIENT_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same (CP 0.61 -> 0.52 ms, 0.58 -> 0.36 in the pair at load 13-16; CP / MP 0.54 -> 0.41)",
        "cmg-connection-point",
        rps=248.9,
        p50_ms=69.1,
        server_cpu_ms=2.35,
        process_cpu_ms=0.61,
        before=CP_CLIENT_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "connection point: its rewrites remembered for the site configuration in use, fault rules matched only when "
        "there are some, no body queue for a whole request (cmglab/services/cmg_connection_point/forwarder.py, "
        "dialer.py; CP / MP 0.273 -> 0.264)",
        "cmg-connection-point",
        rps=21.5,
        p50_ms=586.6,
        server_cpu_ms=12.28,
        process_cpu_ms=2.11,
        before=CP_TRIMS_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same (CP / MP 0.444 -> 0.415)",
        "cmg-connection-point",
        rps=32.4,
        p50_ms=499.8,
        server_cpu_ms=6.72,
        process_cpu_ms=1.49,
        before=CP_TRIMS_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "SMS-trace loggers write a plain message without a LogRecord (no caller lookup, record or handler dispatch; "
        "the same line; cmglab/core/logs.py), ~28 -> ~9 us per line in-process: the connection point writes two per "
        "request (CP / CMG 0.796 -> 0.738)",
        "cmg-connection-point",
        rps=18.2,
        p50_ms=822.9,
        server_cpu_ms=17.10,
        process_cpu_ms=2.85,
        before=SMS_TRACE_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same (CP / CMG 0.764 -> 0.696)",
        "cmg-connection-point",
        rps=27.5,
        p50_ms=543.7,
        server_cpu_ms=8.93,
        process_cpu_ms=1.95,
        before=SMS_TRACE_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP CCM_STS (MutualAuth)",
        "CMG: the connection points' WebSocket on uvicorn's websockets sans-I/O protocol (C-accelerated framing and "
        "unmasking) instead of wsproto's pure-Python one; one loop timer per silent spell of a channel, not one per "
        "frame; a short request target's route remembered (immutable; refusals never); the client's headers "
        "filtered for the frame in one pass (cmglab/runtime/tls.py, services/cmg/channel.py, routing.py, proxy.py; "
        "CMG / MP 0.440 -> 0.384)",
        "cmg",
        rps=141.6,
        p50_ms=88.6,
        server_cpu_ms=2.77,
        process_cpu_ms=0.72,
        before=CMG_TRIMS_BEFORE,
    ),
    Fix(
        "CMG -> CP -> MP location request (ServerAuth)",
        "the same (CMG / MP 0.780 -> 0.690)",
        "cmg",
        rps=387.5,
        p50_ms=43.2,
        server_cpu_ms=1.58,
        process_cpu_ms=0.55,
        before=CMG_TRIMS_BEFORE,
    ),
)


# the MP's per-request work (issue 20, perfmp): interleaved A/B of section 2's scenarios, MP CPU per request
STS_SESSION_BEFORE = (
    "main 8c089f6 (three sessions per CCM_STS), 16 connections, 3 s, mean of 2 runs interleaved with 2 of the "
    "change, load average 13-16"
)
SETTINGS_BEFORE = (
    "main 88ffe5b (a session and ORM rows per site settings read), 16 connections, 3 s, mean of 2 runs "
    "interleaved with 2 of the change (with the log formatter's), load average 15-20"
)
POLICY_BEFORE = (
    "main 84f3a56 (three sessions, every policy body opened per request), 16 connections, 3 s, mean of 2 "
    "runs interleaved with 2 of the change, load average 7-8.5"
)
POLICY_SIGNER_BEFORE = (
    "main 829e5f5 (the signer's lookup in a session of its own, its certificate parsed per request), 16 "
    "connections, 3 s, mean of 2 runs interleaved with 2 of the change, load average 4-8.5"
)
LEAN_BEFORE = (
    "main 0ebbee8 (CCM_POST and CCM_STS through FastAPI's middleware, router and dependencies), 16 connections, "
    "4 s, mean of 2 runs interleaved with 2 of the change, load average 13-21 (one main run's ClientToken and "
    "policy rows, stalled at 2 and 42 req/s, left out)"
)
_LEAN = (
    "CcmMessaging's CCM_POST and CCM_STS answered by a lean ASGI path: the same handlers under the same "
    "LabMiddleware and exception handlers, without FastAPI's layers; a known CCM token's header not parsed "
    "again (cmglab/runtime/fastpath.py)"
)
HOP_BEFORE = (
    "main def181d (CcmMessaging's message work handed to a thread by anyio's run_in_threadpool), 16 connections, "
    "4 s, mean of 2 runs interleaved with 2 of the change, load average 12-22"
)
ANYVERB_BEFORE = (
    "main fbebdf4 (the MP's listeners on uvicorn's h11 protocol), 16 connections, 4 s, mean of 3 runs interleaved "
    "with 3 of the change, load average 13-22"
)
_ANYVERB = (
    "the MP's listeners on llhttp (httptools) instead of h11: each message fed on its own and CCM_POST fed as a "
    "stand-in method, the sent method back in the scope (cmglab/runtime/anyverb.py)"
)
# perfmp3: the machine was loaded far past its 2 cores (load average 20-45) while these were measured, and the
# end-to-end CPU per request swung 3-10x between runs of the same code; the before row is the last full bench run on
# an idle machine, the per-change numbers (interleaved, in-process or end to end) are in each change's text
PLAIN_SQL_BEFORE = (
    "the full bench run of 2026-11-26 01:03 on main 228e12f (section 2: 16 connections, 5 s, the ORM sessions and "
    "defusedxml), not interleaved. Interleaved end to end, main ad4a27c vs 6ddb13a (both changes), 2+2 runs, 4 s, "
    "load average 15-24 (absolute values ~2.5x the idle ones, every run of the change below every run of main): "
    "CCM_STS Certificate 6.23 -> 3.47 ms, ClientToken 8.32 -> 4.05, registration 6.80 -> 3.89, policy assignments "
    "6.33 -> 2.09, location 2.38 -> 1.94"
)
_PLAIN_SQL = (
    "policy assignments, CCM_STS and registration read and write their rows as one plain-SQL unit of work on a "
    "driver connection instead of an ORM session (cmglab/services/management_point/units.py); the assignment "
    "elements built once per state of the policies. In-process CPU of the message work, interleaved 3+3 at load "
    "22-45: policy 3.46 -> 1.32 ms, CCM_STS Certificate 5.54 -> 2.05, ClientToken 6.48 -> 2.95, registration "
    "6.3-7.0 -> 2.1-2.6; end to end (2+2, load 9-16) policy 2.36 -> 1.11 ms"
)
_CODEC = (
    "CcmMessaging replies compressed once per text; XML without a DTD parsed by the C ElementTree parser, not "
    "defusedxml's pure-Python one (cmglab/wire/ccm_messaging.py). In-process, interleaved: the reply cache "
    "1.15 -> 0.73 ms, the C parser 1.17-1.31 -> 0.93-1.15 ms (load 22-45); end to end (2+2, load 13-20) the reply "
    "cache 1.21 -> 0.79 ms"
)
# perfmp5's changes: the MP's CPU per onboarding (section 4's fleet_run alone, the MP's CPU / succeeded), main vs the
# change interleaved; per request kind: the MP alone, one connection at a time (as a fleet's requests arrive)
MP_BODIES_BEFORE_MS = 21.2
MP_BODIES_BEFORE = (
    "main 7a8573c: section 4 alone, 200 devices, concurrency 16, the MP's CPU per onboarding, mean of 2 runs "
    "(20.5, 21.9 ms; all services 74.1, 79.8) interleaved with 2 of the change (after: 17.7 and 18.6 ms, -14 %), "
    "load average 11-15; per "
    "request, the MP alone, one connection, 2+2 interleaved: policy body 1.29 -> 0.50 ms, secret policy body "
    "2.08 -> 1.06, client file 1.10 -> 0.82 (the lean path alone: 1.29 -> 1.09, 2.08 -> 1.87), load 12-17"
)
MP_ISSUED_BEFORE = (
    "main 1860092: section 4 alone, 200 devices, concurrency 16, the MP's CPU per onboarding, mean of 4 runs "
    "(16.7, 15.5, 16.2, 15.8 ms; all services 69.1, 65.2, 67.9, 66.4) interleaved with 4 of the change (after: "
    "15.1, 15.3, 15.3, 15.2 ms, -5 %; each below its pair), load average 15-24"
)
MP_HOPS_BEFORE = (
    "main abb3094: section 4 alone, 200 devices, concurrency 16, the MP's CPU per onboarding, 2 runs (13.0, 13.3 "
    "ms; all services 55.2, 57.6) interleaved with 2 of the change (12.9, 13.2 ms: within the fleet's noise), "
    "load average 11-14; per request, the MP alone, one connection, 2+2 interleaved at load 6-10: CCM_STS (AAD) "
    "1.73/1.73 -> 1.70/1.66 ms, policy body 0.46/0.48 -> 0.44/0.43, secret body 0.99/1.03 -> 0.94/0.94; 8 "
    "connections: unchanged (1.49/1.43 -> 1.46/1.51, 0.29/0.28 -> 0.27/0.27); a lone hop in-process: anyio's "
    "123 us of CPU, the loop's executor 35 us"
)
MP_FILE_BEFORE = (
    "main d2446e1 (FileResponse): per request, the MP alone, one connection, GET /CCM_Client/ccmsetup.cab (400 "
    "bytes) with a CCM token, 2+2 interleaved at load 4-5: 0.75/0.75 -> 0.43/0.42 ms of MP CPU (location, the "
    "control: 0.76/0.76 -> 0.80/0.76); one per onboarding, ~0.3 ms of its MP CPU (below section 4's noise)"
)
MP_AAD_BEFORE = (
    "the idle full run of 2026-11-26 04:00 (main 7a8573c's parent, 16 connections: 491 req/s, 2.02 ms); the "
    "interleaved A/B was one connection at a time (a fleet's arrival), the MP alone, 2+2 at load 12-14: "
    "2.38 -> 2.00 ms with the rule's plain-SQL read, 2.00 -> 1.85 with one parse of the token"
)
# perfmp6's changes: before = the idle full run of 05:23 (section 2; the MP's code as main 4ff9550's); the
# interleaved A/B (two MPs up at once, main 4ff9550 and the change, driven in turn) in the text
MP_STS_BEFORE = (
    "the idle full run of 2026-11-26 05:23 (main cacbf04; the MP's code as main 4ff9550's), section 2: 16 "
    "connections, 5 s. Interleaved, the MP alone: main 4ff9550 and the change up at once (two labs), driven in turn "
    "(A B, then B A), 16 connections, 8 s, 4 + 4 runs at load 16-22, MP CPU per request: CCM_STS Certificate "
    "1.713 -> 1.354 ms (-21 %), BulkRegistration 1.797 -> 1.448 (-19 %), ClientToken 1.813 -> 1.575 (-13 %), "
    "registration 1.351 -> 1.118 (-17 %), AAD 1.795 -> 1.825 (unchanged at 16 connections); AAD one connection at "
    "a time (a fleet's arrival), 6 s, 4 + 4 at load 15-16: 2.439 -> 2.021 ms (-17 %, each run below its pair). "
    "Nearer idle, the change alone (main daf1ac9~1 vs daf1ac9), 3 + 3, 8 s, load 4-7: Certificate 1.270 -> 1.154 "
    "(-9 %), registration 1.217 -> 1.086 (-11 %), each run below its pair"
)
_MP_STS_WORK = (
    "CCM_STS: a site token signed without PyJWT's per-token header and claim work (the same text: "
    "wire/site_tokens.py SiteSigner._sign), its claims read back once (for its row and for the token checks); a "
    "client certificate's subject, thumbprint and parse kept per certificate (management_point/caller.py); the "
    "caller's scheme without building the URL"
)
# perfmp8's changes: before = the idle full run of 2026-11-26 09:00 (section 2), the interleaved A/B in the text
MP_HEADER_BEFORE = (
    "the idle full run of 2026-11-26 09:00 (main 30ff732), section 2: 16 connections, 5 s. Interleaved, the MP "
    "alone: main 9541bbb and the change as kept up at once (two labs), driven in turn (A B, then B A), 16 "
    "connections, 8 s, 4 + 4 runs at load 11-13, MP CPU per request: location 0.549 -> 0.504 ms (-8 %, each run "
    "below its pair), policy assignments 0.790 -> 0.756 (-4 %). (Landed first with a one-pass read of the <Msg> "
    "header, 8 + 8 runs: location -6 %, policy -10 %, registration -7 %; in process that read measured 0-1 us "
    "against thirteen finds, so it was reverted and these rows count without it)"
)
_MP_HEADER = (
    "the MP's thread hop submits to its pool and chains the future without the loop's run_in_executor "
    "coroutine-function check through inspect on Context.run (runtime/offload.py); a token check's log line names "
    "the scope's method and path instead of building Starlette's URL; the site signing certificate's hex for the "
    "site information built once per certificate"
)
MP_SIGNED_DATA_BEFORE = (
    "the idle full run of 2026-11-26 09:00 (main 30ff732), section 2: 16 connections, 5 s. In process (the "
    "bench's registration request): the signed <Data> text 31.6 -> 2.1 us, each certificate's hex 5.5 -> 1.1 us "
    "(two per registration). Interleaved, the MP alone: main e429e31 and the change up at once, driven in turn (A B, "
    "then B A), 16 connections, 8 s, 6 + 6 runs at load 16-19: registration 1.003 -> 0.926 ms (-8 %, 5 of 6 runs "
    "below their pair; location, untouched, 0.466 / 0.478 as the control); an earlier 6 + 6 set at load 12-17, 1.192 "
    "-> 1.050, had a strong run-order effect (the second run of a round 0.1-0.4 ms higher) and is not counted"
)
PERFMP8_FIXES = (
    Fix(scenarios.MP_LOCATION, _MP_HEADER, "management-point", 2001.0, 7.787, 0.5, 0.5, before=MP_HEADER_BEFORE),
    Fix(scenarios.MP_POLICY, "the same", "management-point", 1438.0, 10.236, 0.69, 0.69, before=MP_HEADER_BEFORE),
    Fix(
        scenarios.MP_REGISTRATION,
        "registration: the signed <Data> text found by two finds instead of a lazy DOTALL regex over the 4 KB body "
        "(the same text: tests/test_mp_registration_data.py), each certificate's hex for the client row once per "
        "certificate (management_point/registration.py)",
        "management-point",
        1067.0,
        11.738,
        0.93,
        0.93,
        before=MP_SIGNED_DATA_BEFORE,
    ),
)

IDLE_1206 = "the idle full run of 2026-11-26 12:06 (main 63254ae), section 2: 16 connections, 5 s"
MP_SETTINGS_WATCH_BEFORE = (
    f"{IDLE_1206}. Interleaved, the MP alone: main 18fc97c and the change up at once (two labs), driven in turn "
    "(A B, then B A), 16 connections, 8 s, MP CPU per request: 4 + 4 runs at load 10-13, location 0.483 -> 0.417 ms "
    "(-14 %, each run below its pair; registration, which reads the settings in its unit, 0.926 / 0.897 as the "
    "control); 2 + 2 at load 9-11, location 0.502 -> 0.437, CCM_STS Certificate 1.108 / 1.085 and policy 0.690 / "
    "0.709 (untouched: they commit on every request, so they read as before)"
)
MP_ENTRA_KNOWN_BEFORE = (
    f"{IDLE_1206}. Interleaved, the MP alone: main 48d0b82 and the change up at once (two labs), driven in turn "
    "(A B, then B A), 16 connections, 8 s, MP CPU per request, 4 + 4 runs at load 10.5-11.3: CCM_STS (AAD proof) "
    "1.394 -> 1.123 ms (-19 %, each run below its pair); 2 + 2 at load 5.5-6.9 (with a one-row settings read in "
    "the unit that was not kept): 1.374 -> 1.082"
)
MP_STS_ONE_HOP_BEFORE = (
    f"{IDLE_1206}. Interleaved, the MP alone: main c8e9ea5 and the change up at once (two labs), driven in turn, "
    "16 connections, 8 s, MP CPU per request, 3 + 3 runs at load 4.3-7.1 then 2 + 2 at load 7.8-8.2: Certificate "
    "1.028 -> 1.003 ms (-2.4 %, 5 of 5 runs below their pair), BulkRegistration 1.136 -> 1.080 (-4.9 %, 5 of 5), "
    "ClientToken 1.115 -> 1.103 (-1.1 %, 3 of 5), AAD 1.118 -> 1.025 (-8 %, 2 of 2)"
)
MP_REPLY_HEADER_BEFORE = (
    f"{IDLE_1206}. In process: a location reply 14.9 -> 10.3 us. Interleaved, the MP alone: main 4031b60 and the "
    "change up at once (two labs), driven in turn, 16 connections, 8 s, 3 + 3 runs at load 6.5-8.5, MP CPU per "
    "request: location 0.356 -> 0.338 ms (3 of 3 runs below their pair), policy 0.647 -> 0.587 (3 of 3), "
    "registration 0.914 -> 0.855 (2 of 3; A's 1.083 an outlier); again 2 + 2 at load 8.0-8.2: location 0.335 -> "
    "0.324 (2 of 2), policy 0.594 -> 0.587 (2 of 2)"
)
PERFMP9_FIXES = (
    Fix(
        scenarios.MP_LOCATION,
        "the site settings' read per request (a pooled connection, a SELECT) skipped while nothing was committed to "
        "the MP's SQLite file since the last one: PRAGMA data_version on a connection of its own says so; a change "
        "still applies from the next request, whoever commits it (management_point/settings_watch.py)",
        "management-point",
        2043.0,
        7.644,
        0.49,
        0.49,
        before=MP_SETTINGS_WATCH_BEFORE,
    ),
    Fix(
        floor.STS_AAD,
        "an Entra token the site's rule accepted is known by its text under the same rule object and keys until its "
        "exp (no PyJWT decode, no RSA verification; another rule after an onboarding, an expired or one-byte "
        "different token and every refusal are checked in full; management_point/entra_known.py), for CCM_STS's "
        "AAD proof and a registration's Entra token (seed 001 shows the MP the same token twice); the rule's tenants "
        "read in the request's unit of work instead of on a pooled connection of their own (sts.py)",
        "management-point",
        757.0,
        19.537,
        1.31,
        1.31,
        before=MP_ENTRA_KNOWN_BEFORE,
    ),
    Fix(
        floor.STS_CERT,
        "CCM_STS in one thread hop with its six CCM_STS.log lines, four of which were written on the event loop "
        "(the same lines in the same order; an AAD proof without its token refused in the hop; sts.py "
        "TokenService._process_now)",
        "management-point",
        923.0,
        16.139,
        1.08,
        1.08,
        before=MP_STS_ONE_HOP_BEFORE,
    ),
    Fix(floor.STS_BULK, "the same", "management-point", 823.0, 18.572, 1.21, 1.21, before=MP_STS_ONE_HOP_BEFORE),
    Fix(floor.STS_CLIENT, "the same", "management-point", 778.0, 18.925, 1.28, 1.28, before=MP_STS_ONE_HOP_BEFORE),
    Fix(floor.STS_AAD, "the same", "management-point", 757.0, 19.537, 1.31, 1.31, before=MP_STS_ONE_HOP_BEFORE),
    Fix(
        scenarios.MP_LOCATION,
        "a CcmMessaging reply's <Msg> header written as one text (the bytes MsgHeader.to_xml writes for a reply's "
        "fields: tests/test_ccm_reply_header.py) instead of a MsgHeader of 22 fields and its general writer "
        "(wire/ccm_messaging.py encode_reply)",
        "management-point",
        2043.0,
        7.644,
        0.49,
        0.49,
        before=MP_REPLY_HEADER_BEFORE,
    ),
    Fix(scenarios.MP_POLICY, "the same", "management-point", 1211.0, 11.931, 0.82, 0.82, before=MP_REPLY_HEADER_BEFORE),
    Fix(
        scenarios.MP_REGISTRATION,
        "the same",
        "management-point",
        1041.0,
        12.33,
        0.95,
        0.95,
        before=MP_REPLY_HEADER_BEFORE,
    ),
)

IDLE_1451 = "the idle full run of 2026-11-26 14:51, section 2: 16 connections, 5 s"
POLICY_KEPT_BEFORE = (
    f"{IDLE_1451}. Interleaved, the MP alone (with the CRL host), a fresh lab per run, 16 connections, 8-10 s, MP "
    "CPU per request (location, untouched, as the control: 0.28-0.39 in every run): main 516ada9 0.55, 0.54, 0.59 "
    "ms; with the rows kept and the time's resolution 0.40, 0.39, 0.42, 0.40, 0.50, 0.42, 0.49, 0.39 (-24 %); with "
    "the PayloadSignatures remembered too 0.36, 0.32, 0.40, 0.41, 0.42, 0.43, 0.37, 0.41, 0.36 (-9 % more, below "
    "its pair in 4 of 4 pairs of the balanced set); again 4 + 4 (load 15-19): 0.42, 0.44, 0.39, 0.40 -> with the "
    "request body's fields remembered 0.38, 0.38, 0.34, 0.37 (-10 %, 4 of 4 pairs), load average 10-19 in all. In "
    "process (dispatch's thread CPU): 300-330 -> 191 -> 150 -> 125 us (a location request 107-114)"
)


def _policy_kept(change: str) -> Fix:
    """A policy change of perfpolicy10's: the 14:51 run's row before, its interleaved runs in POLICY_KEPT_BEFORE."""
    return Fix(scenarios.MP_POLICY, change, "management-point", 1760.0, 8.933, 0.56, 0.56, before=POLICY_KEPT_BEFORE)


PERFPOLICY10_FIXES = (
    _policy_kept(
        "policy assignments: the signer's row and the policies kept while nothing was committed to the MP's SQLite "
        "file (PRAGMA data_version; bounded, a client not found never kept; management_point/assignment_reads.py), "
        "and the client's last policy request written (before the reply) only when the one stored is a minute old "
        "or none, instead of a write and commit per request (policy.py; management_point/README.md says why)"
    ),
    _policy_kept(
        "a PayloadSignature verified before with the client's registered certificate remembered by a digest of "
        "certificate, signature and payload (a client signs the same body the same way each cycle; bounded, a "
        "failure never kept; management_point/signed_payloads.py)"
    ),
    _policy_kept(
        "a RequestAssignments body's ClientID and ResourceType parsed once per text (it names only the client; the "
        "latest 1,024 bodies of at most 4 KB, a refusal never kept; the ClientID still checked against the signer "
        "per request; policy.py)"
    ),
)

PERFPOLICY11_BEFORE = (
    "interleaved, the MP alone (with the CRL host), a fresh lab per run, 16 connections, 8 s, MP CPU per request; "
    "main 6a3c449 (before) and the change in A B B A A B B A and B A A B B A A B order, load average 7-14: policy "
    "0.39, 0.35, 0.33, 0.41, 0.35, 0.31, 0.41, 0.43 ms -> 0.41, 0.30, 0.33, 0.31, 0.32, 0.31, 0.30, 0.32 (-13 %, "
    "lower in 6 of 8 pairs), its worker threads 0.186 -> 0.164 ms; location 0.36, 0.34, 0.31, 0.34, 0.31, 0.32, "
    "0.36, 0.34 -> 0.33, 0.31, 0.30, 0.34, 0.29, 0.27, 0.30, 0.28 (-10 %, 7 of 8), worker threads 0.167 -> 0.145"
)
_AWAKE = (
    "the MP's message work on 4 awake threads of its 40: further work waits for the first to finish, which takes it "
    "without sleeping, instead of waking a thread each; work queued 20 ms gets a thread of its own "
    "(runtime/offload.py awake and STALL; management_point/transport.py mp_work)"
)
ENTRA_AWAKE_BEFORE = (
    "interleaved, every service up and pinned as the bench does, a fresh lab per run, 16 connections, 6 s, Entra CPU "
    "per request; main 527ec34 (before) and the change in A B B A A B, B A A B B A A B and A B B A order (9 pairs), "
    "load average 4.7-8.1: device token 0.95, 1.00, 0.98, 1.00, 0.92, 0.88, 0.93, 0.99, 0.87 ms -> 0.89, 0.91, "
    "0.84, 0.88, 0.98, 0.90, 0.86, 0.85, 0.85 (-7 %, lower in 7 of 9 pairs; before_rps: the last two pairs' mean); "
    "ROPC 1.25 -> 1.27 ms (6 pairs, 3 lower) and the DRS join 0.90 -> 0.88 (9 pairs), within their noise"
)
NONCE_BEFORE = (
    "interleaved, every service up and pinned as the bench does, a fresh lab per run, 16 connections, 6 s, Entra CPU "
    "per request; main 077efc8 (before) and the change in A B B A A B B A and B A A B B A A B order (8 pairs), load "
    "average 4.2-12 with a CI run beside them: device token 1.13, 0.99, 1.05, 0.88, 1.03, 0.88, 0.94, 0.95 ms -> "
    "0.93, 1.10, 0.92, 0.86, 0.96, 0.91, 0.90, 0.86 (-5 %, lower in 6 of 8 pairs); ROPC and the DRS join, which "
    "spend no nonce, 1.25 -> 1.25 and 0.90 -> 0.89"
)
PERFPOLICY11_FIXES = (
    Fix(scenarios.MP_POLICY, _AWAKE, "management-point", 2622.8, None, 0.37, 0.37, before=PERFPOLICY11_BEFORE),
    Fix(scenarios.MP_LOCATION, "the same", "management-point", 2955.8, None, 0.34, 0.34, before=PERFPOLICY11_BEFORE),
    Fix(
        floor.DEVICE_TOKEN,
        "Entra's work the same way, and both pools let one thread per CPU the process may use run at once, at least 4 "
        "(runtime/offload.py awake_for_cpus; entra/parts.py): signatures release the GIL and may use every CPU",
        "entra",
        1073.6,
        None,
        0.95,
        0.95,
        before=ENTRA_AWAKE_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "Entra's nonces issued without a write (the expiry and random bytes under an HMAC keyed from the lab's admin "
        "token) and spent once by inserting them (entra/nonces.py, store.py): one write less per device token op",
        "entra",
        684.0,
        None,
        0.98,
        0.98,
        before=NONCE_BEFORE,
    ),
)

IDLE_1800 = "the idle full run of 2026-11-26 18:00 (main 08089b5), section 2: 16 connections, 5 s"
HELD_LINES_BEFORE = (
    f"{IDLE_1800}. Interleaved, the MP alone: main and the change up at once (two labs, each importing its own "
    "tree), driven in turn (A B, then B A), 16 connections, 3-4 s slices, MP CPU per request, medians (pairs with the "
    "change lower): main 6a3c449, load 9.4-12: Certificate 0.861 -> 0.817 ms (4/8), registration 0.697 -> 0.682 "
    "(4/8), ClientToken 0.951 -> 0.867 (7/8), BulkRegistration 1.014 -> 0.968 (5/8); main 527ec34, load 7-9: "
    "Certificate 0.847 -> 0.857 (3/8) and 0.770 -> 0.747 (7/8), registration 0.740 -> 0.771 (1/8) and 0.787 -> 0.734 "
    "(7/8), ClientToken 0.928 -> 0.901 (7/8) and 0.921 -> 0.927 (6/8): 51 of 80 pairs lower. In process: six "
    "CCM_STS lines 28-33 -> 16-18 us; per CCM_STS request 5 writes and 5 gettid calls fewer (perf stat)"
)
_HELD = (
    "a CCM_STS request's six CCM_STS.log lines and a registration's three MP_RegistrationManager.log lines written "
    "in one write when the request ends, answered or failed (the same lines in the same order, each with its own "
    "time; core/logs.py held_lines, sts.py, registration.py)"
)
PERFSTS11_FIXES = (
    Fix(floor.STS_CERT, _HELD, "management-point", 1355.0, 11.249, 0.73, 0.73, before=HELD_LINES_BEFORE),
    Fix(floor.STS_CLIENT, "the same", "management-point", 1250.0, 11.855, 0.79, 0.79, before=HELD_LINES_BEFORE),
    Fix(floor.STS_BULK, "the same", "management-point", 1270.0, 11.731, 0.78, 0.78, before=HELD_LINES_BEFORE),
    Fix(scenarios.MP_REGISTRATION, "the same", "management-point", 1579.0, 9.791, 0.63, 0.63, before=HELD_LINES_BEFORE),
)

MP_FIXES = (
    Fix(scenarios.MP_LOCATION, _ANYVERB, "management-point", 766.4, None, 0.93, 0.93, before=ANYVERB_BEFORE),
    Fix(scenarios.MP_STS, "the same", "management-point", 317.0, None, 2.42, 2.42, before=ANYVERB_BEFORE),
    Fix(scenarios.MP_STS_CLIENT, "the same", "management-point", 314.3, None, 2.78, 2.78, before=ANYVERB_BEFORE),
    Fix(scenarios.MP_REGISTRATION, "the same", "management-point", 382.7, None, 2.21, 2.21, before=ANYVERB_BEFORE),
    Fix(scenarios.MP_POLICY, "the same", "management-point", 411.7, None, 2.18, 2.18, before=ANYVERB_BEFORE),
    Fix(
        scenarios.MP_LOCATION,
        "CcmMessaging's message work handed to a thread by the event loop's own executor hop instead of anyio's "
        "(no async-library sniffing, capacity limiter or run vars per call; transport.off_loop)",
        "management-point",
        728.1,
        None,
        0.96,
        0.96,
        before=HOP_BEFORE,
    ),
    Fix(scenarios.MP_POLICY, "the same", "management-point", 343.8, None, 2.20, 2.20, before=HOP_BEFORE),
    Fix(scenarios.MP_LOCATION, _LEAN, "management-point", 355.2, None, 1.29, 1.29, before=LEAN_BEFORE),
    Fix(scenarios.MP_POLICY, "the same", "management-point", 207.8, None, 2.54, 2.54, before=LEAN_BEFORE),
    Fix(scenarios.MP_REGISTRATION, "the same", "management-point", 278.7, None, 2.47, 2.47, before=LEAN_BEFORE),
    Fix(scenarios.MP_STS, "the same", "management-point", 209.8, None, 2.66, 2.66, before=LEAN_BEFORE),
    Fix(scenarios.MP_STS_CLIENT, "the same", "management-point", 130.0, None, 3.23, 3.23, before=LEAN_BEFORE),
    Fix(
        "MP policy assignments (signed request)",
        "the signed message's client looked up in the request's one session, its signing key parsed once per "
        "registered certificate (cmglab/services/management_point/policy.py)",
        "management-point",
        rps=302.2,
        p50_ms=None,
        server_cpu_ms=2.92,
        process_cpu_ms=2.92,
        before=POLICY_SIGNER_BEFORE,
    ),
    Fix(
        "MP policy assignments (signed request)",
        "policy assignments: the client's last request time and the policies in one session; a stored (sealed) "
        "body opened and hashed once per stored text, not per request (cmglab/services/management_point/policy.py)",
        "management-point",
        rps=303.3,
        p50_ms=None,
        server_cpu_ms=3.23,
        process_cpu_ms=3.23,
        before=POLICY_BEFORE,
    ),
    Fix(
        "MP CCM_STS (Certificate proof)",
        "CCM_STS: the client lookup, the site's token lifetime and the issued token's row in one session and one "
        "transaction instead of three (cmglab/services/management_point/sts.py)",
        "management-point",
        rps=156.4,
        p50_ms=None,
        server_cpu_ms=3.30,
        process_cpu_ms=3.30,
        before=STS_SESSION_BEFORE,
    ),
    Fix(
        "MP CCM_STS (ClientToken proof)",
        "the same",
        "management-point",
        rps=104.1,
        p50_ms=None,
        server_cpu_ms=4.08,
        process_cpu_ms=4.08,
        before=STS_SESSION_BEFORE,
    ),
    Fix(
        scenarios.MP_LOCATION,
        "the site settings read per request in plain SQL on a pooled driver connection, parsed only when their "
        "text changed (cmglab/services/management_point/store.py, cmglab/runtime/db.py Database.read)",
        "management-point",
        rps=268.9,
        p50_ms=None,
        server_cpu_ms=1.74,
        process_cpu_ms=1.74,
        before=SETTINGS_BEFORE,
    ),
    Fix(
        scenarios.MP_REGISTRATION,
        "the same",
        "management-point",
        rps=163.4,
        p50_ms=None,
        server_cpu_ms=2.98,
        process_cpu_ms=2.98,
        before=SETTINGS_BEFORE,
    ),
    Fix(
        "MP CCM_STS (Certificate proof)",
        "the same (the token lifetime, read within CCM_STS's session)",
        "management-point",
        rps=121.1,
        p50_ms=None,
        server_cpu_ms=3.19,
        process_cpu_ms=3.19,
        before=SETTINGS_BEFORE,
    ),
    Fix(scenarios.MP_POLICY, _PLAIN_SQL, "management-point", 459.0, 29.67, 2.15, 2.15, before=PLAIN_SQL_BEFORE),
    Fix(scenarios.MP_STS, "the same (CCM_STS)", "management-point", 450.0, 34.18, 2.19, 2.19, before=PLAIN_SQL_BEFORE),
    Fix(scenarios.MP_STS_CLIENT, "the same", "management-point", 365.0, 41.78, 2.71, 2.71, before=PLAIN_SQL_BEFORE),
    Fix(
        scenarios.MP_REGISTRATION,
        "the same (a registration without a conflicting record; a conflict keeps the ORM path)",
        "management-point",
        452.0,
        33.52,
        2.19,
        2.19,
        before=PLAIN_SQL_BEFORE,
    ),
    Fix(scenarios.MP_LOCATION, _CODEC, "management-point", 1221.0, 11.22, 0.81, 0.81, before=PLAIN_SQL_BEFORE),
    Fix(
        ONBOARDING_SERVICES,
        "MP: policy bodies (.sms_pol GET) and client package files (CCM_Client GET) on the lean path, not FastAPI's "
        "layers (a file's stat handed to FileResponse); a policy body's row, and a secret policy's client, read in "
        "one plain-SQL unit instead of two ORM sessions; a non-secret body opened and encoded once per stored text, "
        "a secret one per request (cmglab/services/management_point/routes_sms_mp.py, routes_site.py, policy.py)",
        "management-point",
        rps=6.5,
        p50_ms=None,
        server_cpu_ms=77.0,
        process_cpu_ms=MP_BODIES_BEFORE_MS,
        before=MP_BODIES_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "MP: a CCM token CCM_STS has just signed is known to the MP's token checks from its first use (its claims "
        "read back from its text, cmglab/wire/site_tokens.py VerifiedTokens.issued): an onboarding's two first "
        "uses no longer parse it twice, verify its signature and hop to a thread; a token unlike it by one byte "
        "is still verified in full (cmglab/services/management_point/sts.py)",
        "management-point",
        rps=7.9,
        p50_ms=None,
        server_cpu_ms=67.2,
        process_cpu_ms=16.05,
        before=MP_ISSUED_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "MP: CCM_STS's, the Entra-token check's and the policy bodies' thread hops by the loop's own executor "
        "(transport.off_loop, as CcmMessaging's) instead of anyio's, which costs ~3x the CPU when its worker "
        "sleeps between requests, as in a fleet (cmglab/services/management_point/sts.py, transport.py, "
        "routes_sms_mp.py)",
        "management-point",
        rps=15.9,
        p50_ms=None,
        server_cpu_ms=56.4,
        process_cpu_ms=13.15,
        before=MP_HOPS_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "MP: a small client package file (a plain GET, under one 64 KiB chunk) read in one thread hop and sent as one "
        "message instead of FileResponse's three anyio hops and disconnect-watching task group; HEAD, ranges, larger "
        "files and every header stay FileResponse's (cmglab/services/management_point/routes_site.py ClientFile)",
        "management-point",
        rps=15.9,
        p50_ms=None,
        server_cpu_ms=56.4,
        process_cpu_ms=13.0,
        before=MP_FILE_BEFORE,
        onboarding=True,
    ),
    Fix(
        floor.STS_AAD,
        "the site's Entra-token rule (onboarded tenants and their audiences) read per request in plain SQL and "
        "built once per state of the tenants' rows, not an ORM session each time; the token's header and "
        "unverified claims from one parse (cmglab/services/management_point/store.py, cmglab/wire/entra_tokens.py)",
        "management-point",
        rps=491.0,
        p50_ms=31.85,
        server_cpu_ms=2.02,
        process_cpu_ms=2.02,
        before=MP_AAD_BEFORE,
    ),
    *(
        Fix(name, change, "management-point", rps, p50, cpu, cpu, before=MP_STS_BEFORE)
        for name, change, rps, p50, cpu in (
            (scenarios.MP_STS, _MP_STS_WORK, 944.0, 15.79, 1.05),
            (
                floor.STS_AAD,
                "the same; the Entra token's rule read, its check and the issue in one thread hop, not three",
                735.0,
                21.34,
                1.35,
            ),
            (floor.STS_BULK, "the same; the bulk token verified once, then known by its text", 778.0, 18.11, 1.28),
            (
                scenarios.MP_STS_CLIENT,
                "the same; the client token verified once, then known by its text",
                741.0,
                19.09,
                1.34,
            ),
            (
                scenarios.MP_REGISTRATION,
                "the same (the registration's certificates, thumbprints and subject); the "
                "site's settings read in the registration's unit, not on a connection of their own",
                1005.0,
                12.54,
                0.98,
            ),
        )
    ),
    *PERFMP8_FIXES,
    *PERFMP9_FIXES,
    *PERFPOLICY10_FIXES,
    *PERFPOLICY11_FIXES,
    *PERFSTS11_FIXES,
)

# the agent's CPU per onboarding (section 4's devices_cpu_s / succeeded), perfbench's changes
DEVICE_BEFORE = (
    "section 4 alone: 100 devices, concurrency 16, the change reverted, mean of 2 runs interleaved with 2 of the "
    "change (after: 98.8 and 98.9 ms), load average 15-19"
)
# perfagent's changes: main 0ebbee8 (before) and the change (after), section 4's fleet_run alone, interleaved
CONTEXTS_BEFORE = (
    "main 0ebbee8 (a new TLS context per client, a new client per CRL): section 4 alone, 100 devices, concurrency "
    "16, mean of 2 runs (87.1, 90.2 ms) interleaved with 2 of the change (after: 78.7 and 85.6 ms), load average "
    "14-20"
)
LOGGERS_BEFORE_MS = 97.1
LOGGERS_BEFORE = (
    "main 0ebbee8 (file loggers in logging's registry; with change 1 not applied): section 4 alone, 400 devices "
    "(keys: a 400-key pool repeated), concurrency 16, mean of 2 runs (92.0, 102.2 ms) interleaved with 2 of both "
    "changes (after: 86.3 and 85.0 ms), load average 19-20; the logger part grows with the fleet: at 1000 devices "
    "(one run each, pool repeated 10x, load 12-18) 112.3 ms on main -> 78.0 ms with both changes"
)
# perfagent3's change: main 228e12f (before) and the change (after), section 4's fleet_run alone, interleaved, on a
# machine loaded by other work (load average 19-35 on 2 CPUs: CPU per onboarding 2-3x the idle bench's)
H1_BEFORE = (
    "main 228e12f (httpx's HTTPTransport: httpcore and h11; httpx's send, URL parsing and cookie jar per request): "
    "section 4 alone, 100 devices, concurrency 16, mean of 2 runs (327.1, 205.3 ms) interleaved with 2 of the "
    "change (after: 235.8 and 160.6 ms, -25 %), load average 19.5-32.2 (2-3x the idle bench's CPU per onboarding); "
    "sequential onboardings in one thread (thread CPU, load 16-28): 80.0 -> 71.3 ms with the transport alone, "
    "131.5 -> 94.8 ms with both parts"
)
H1_BEFORE_MS = 266.2
DEVICE_FIXES = (
    Fix(
        ONBOARDING,
        "agent: the PRT sign-in loads the transport key without the RSA consistency check; the agent's "
        "settings built once per environment, not per request (cmglab/agent/dsregcmd/join.py, settings.py)",
        "devices",
        rps=2.41,
        p50_ms=None,
        server_cpu_ms=145.1,
        process_cpu_ms=145.1,
        before=DEVICE_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING,
        "agent: TLS contexts without a client certificate shared by the devices whose Root store holds the same "
        "certificates (5 per onboarding, ~1.4 ms each), one CRL client per chain walk, cheaper atomic private "
        "writes (cmglab/agent/network.py, protect.py)",
        "devices",
        rps=2.3,
        p50_ms=None,
        server_cpu_ms=88.7,
        process_cpu_ms=88.7,
        before=CONTEXTS_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING,
        "core logs: the file loggers kept in a table of their own instead of logging's registry, whose every "
        "setLevel and close walked the loggers of all devices before (a device's 8 logs set up and closed: 37 ms "
        "at the 1000th device of a process, 136 ms at the 2000th -> 1.7 ms) (cmglab/core/logs.py)",
        "devices",
        rps=2.6,
        p50_ms=None,
        server_cpu_ms=LOGGERS_BEFORE_MS,
        process_cpu_ms=LOGGERS_BEFORE_MS,
        before=LOGGERS_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING,
        "agent: requests on a lean HTTP/1.1 transport (blocking sockets, ssl, llhttp; the device's TLS context, "
        "name mapping, timeouts, httpx's errors and trace hook for the revocation check kept) and httpx's send "
        "without its auth/redirect generators and per-reply cookie parsing, URL strings parsed once "
        "(cmglab/wire/h1transport.py, cmglab/agent/network.py)",
        "devices",
        rps=1.01,
        p50_ms=None,
        server_cpu_ms=H1_BEFORE_MS,
        process_cpu_ms=H1_BEFORE_MS,
        before=H1_BEFORE,
        onboarding=True,
    ),
)


# Entra's per-request work (issue 20, perfentra): interleaved A/B of Entra's scenarios, Entra CPU per request
ROPC_LOCKOUT_BEFORE = (
    "main badb2c2 (the smart lockout read and reset in two sessions of their own), 16 connections, 3 s, mean of "
    "2 runs interleaved with 2 of the change (after: 3.72 and 3.67 ms), load average 1.6-4.3"
)
DEVICE_TOKEN_HEADER_BEFORE = (
    "main 9e2088d (the request's JOSE header parsed by PyJWT's get_unverified_header twice), 16 connections, 3 s, "
    "mean of 2 runs interleaved with 2 of the change (after: 4.88 and 4.82 ms per operation), load average 4.1-5.7"
)
NONCE_PRUNE_BEFORE = (
    "main fc341e0 (expired nonces deleted on every srv_challenge), 16 connections, 3 s, mean of 2 runs "
    "interleaved with 2 of the change (after: 4.56 and 4.61 ms per operation), load average 8.6-13.8"
)
DIRECTORY_CACHE_BEFORE = (
    "main 0ebbee8 (tenant, client and resource read by ORM lookups per request, the refresh token flushed as an "
    "ORM object), 16 connections, 3 s, mean of 2 runs interleaved with 2 of the change (after: ROPC 3.01 and "
    "2.97 ms, device token 4.07 and 3.76 ms per operation), load average 9.9-13.3"
)
CORE_WRITES_BEFORE = (
    "main 790b829 (nonces added and spent, devices added as ORM objects and an ORM-enabled DELETE through the "
    "session; the signer's public key derived per verification), 16 connections, 3 s, mean of 3 runs interleaved "
    "with 3 of the change (after: device token 3.33, 3.17 and 3.16 ms per operation, DRS join 2.42, 2.61 and "
    "2.44 ms), load average 10.4-23.0"
)
ENTRA_LEAN_BEFORE = (
    "main 88e7f71 (the token endpoints and the DRS join through FastAPI's middleware, routing and dependency "
    "layers), 16 connections, 3 s, mean of 2 runs interleaved with 2 of the change (after: ROPC 2.79 and 2.70 ms, "
    "device token 2.87 and 2.70 ms per operation, DRS join 2.24 and 2.22 ms), load average 19.4-23.1"
)
NONCE_CORE_BEFORE = (
    "main dd7c8ed (a nonce's own unit of work an ORM session), 16 connections, 6 s, mean of 3 runs interleaved "
    "with 3 of the change at load average 30-37, where the service's CPU per operation was noise (main 8.72, 12.06, "
    "8.11 ms; change 10.55, 7.95, 13.15 ms); the gain was measured in-process instead: thread CPU of Grants.token "
    "for srv_challenge + the signed request, 5 x 200 operations, 2 runs each interleaved, median 5.50 and 6.76 ms "
    "-> 4.65 and 4.75 ms (min 5.30, 5.90 -> 4.15, 4.47) at load 25-30; on an idle machine the two units of work "
    "cost ~0.4 ms as ORM sessions and ~0.25 ms as Core transactions (micro-benchmark)"
)
GC_FREEZE_BEFORE = (
    "main a7c02e8 (no gc.freeze): section 4 alone, 200 devices, concurrency 16, fresh services, mean of 2 runs "
    "(Entra 32.15 and 30.45 ms per onboarding; all services 84.6 and 81.1 ms) interleaved with 2 of the change "
    "(after: Entra 28.65 and 27.55 ms, all services 78.3 and 74.9 ms; Entra's full collections 0.76 and 0.60 s "
    "of CPU per fleet -> 0.18 and 0.17 s, the trims' 0.61 and 0.46 s -> 0.04 and 0.03 s), load average 16-21"
)
GC_FREEZE_BEFORE_RPS, GC_FREEZE_BEFORE_MS, GC_FREEZE_BEFORE_ENTRA_MS = 5.86, 82.8, 31.3
DOMAIN_CACHE_BEFORE = (
    "main b87d9bd (the domain and its tenant read by ORM lookups per request): Entra alone, 16 keep-alive "
    "connections, 4 s per request, 2 runs interleaved with 2 of the change: user realm 0.683 and 0.681 -> 0.334 "
    "and 0.341 ms, DRS discovery 0.591 and 0.599 -> 0.363 and 0.367 ms of Entra's CPU per request (OpenID "
    "configuration, unchanged, 0.33-0.34 ms both), load average 11-14: ~0.9 ms per onboarding; section 4 "
    "alone (200 devices, concurrency 16, C D C D): Entra 27.45 and 25.75 -> 25.0 and 26.2 ms per onboarding, "
    "all services 75.7 and 70.0 -> 69.3 and 72.8 ms, load average 15-17 (the gain is below that run's noise)"
)
DOMAIN_CACHE_BEFORE_RPS, DOMAIN_CACHE_BEFORE_MS, DOMAIN_CACHE_BEFORE_ENTRA_MS = 9.93, 72.8, 26.6
DEVICE_FACTS_BEFORE = (
    "main c410fff (the device row selected and loaded as an ORM entity): Entra alone, section 2's device token "
    "scenario (srv_challenge + the signed request), 16 connections, 4 s, 2 runs of 2 measurements each interleaved "
    "with 2 of the change: 2.484, 2.438, 2.452, 2.416 -> 2.085, 2.120, 2.231, 2.303 ms of Entra's CPU per operation "
    "(-0.26 ms; three device-signed requests per onboarding), load average 16-20"
)
DRS_JOIN_LEAN_BEFORE = (
    "main 4ff9550 (the join's user loaded as an ORM entity; the device certificate built by builders.leaf, one "
    "builder copy per extension and the authority key identifier hashed per certificate): Entra alone, section 2's "
    "DRS join scenario, 16 connections, 8 s, main and the change interleaved 3 + 3: 2.345, 2.547, 2.436 -> 2.170, "
    "1.894, 2.439 ms of Entra's CPU per join (mean 2.44 -> 2.17, -0.27 ms, -11 %), load average 13.6-16.2; the join's "
    "worker thread alone, in process (thread CPU, 400 joins, 3 + 3): 1.82 -> 1.57 ms"
)
SIGN_IN_FACTS_BEFORE = (
    "main 1bca971 (the user by an ORM select, the lockout row by an ORM get): Entra alone, section 2's ROPC "
    "scenario, 16 connections, 8 s, main and the change interleaved 2 + 2: 2.766, 2.732 -> 2.500, 2.482 ms of "
    "Entra's CPU per sign-in (-0.26 ms, -9 %), load average 15-19; again 3 + 3 (with the JWS and nonce changes, "
    "which ROPC does not use): 2.672, 3.207, 2.791 -> 2.469, 2.867, 2.276 ms, load average 11-16"
)
JWS_NONCE_BEFORE = (
    "main 1bca971 (jwt.decode, which checks every character of the token in Python; each nonce in a Core "
    "transaction): Entra alone, section 2's device token scenario (srv_challenge + the signed request), 16 "
    "connections, 8 s, main and the change interleaved 3 + 3: 2.383, 2.507, 2.577 -> 2.331, 2.433, 2.400 ms of "
    "Entra's CPU per operation (-0.10 ms, -4 %), load average 12-16; in process: the nonce's issue + use 0.18 -> "
    "0.065 ms, the request's decode (3.4 KB) 0.23 -> 0.10 ms; the DRS join (its bearer token decoded the same way) "
    "2.087 -> 2.035 ms in the same runs (within the noise; its decode 0.123 -> 0.064 ms in process)"
)
ENTRA_OFFLOAD_BEFORE = (
    "main 0542267 (Starlette's run_in_threadpool: anyio's hop, ~0.045 ms of loop CPU against ~0.02 for the loop's "
    "executor in a micro-benchmark on uvloop): Entra alone, section 2's scenarios, 16 connections, 8 s, main and "
    "the change interleaved 3 + 3, load average 8.4-11.1, ms of Entra's CPU per operation (event-loop thread): "
    "device token 3.020, 2.447, 2.202 -> 2.681, 2.009, 2.156 (loop 0.75 -> 0.60); DRS join 2.236, 2.524, 2.663 -> "
    "2.181, 1.926, 2.234 (loop 0.41 -> 0.32); ROPC 2.339, 2.485, 3.042 -> 2.351, 2.295, 2.486 (loop 0.43 -> 0.38)"
)
PLAIN_UNITS_BEFORE = (
    "main 77d244d (an ORM session per request: its begin, connection checkout, Core statements and commit, ~0.15 "
    "ms of CPU in process for a generation read and a select against ~0.02 in plain SQL): Entra alone, section 2's "
    "scenarios, 16 connections, 8 s, main and the change interleaved 3 + 3, load average 17.5-22.5, ms of Entra's "
    "CPU per operation: device token 2.496, 2.554, 2.352 -> 1.904, 1.975, 2.490 (mean 2.47 -> 2.12; the third "
    "change run beside a test run, loop thread 0.87); DRS join 2.204, 2.238, 1.972 -> 1.481, 1.557, 1.604 (mean "
    "2.14 -> 1.55, -28 %); in process (one thread): join 1.52 -> 1.11 ms, the signed request 1.25 -> 1.02 ms"
)
ROPC_PLAIN_BEFORE = (
    "main 9541bbb (the sign-in's reads and the lockout reset in the reply's ORM session): Entra alone, section 2's "
    "ROPC scenario, 16 connections, 8 s, main and the change interleaved 3 + 3, load average 14.8-20.4: 2.466, "
    "2.658, 2.258 -> 2.316, 2.242, 2.145 ms of Entra's CPU per sign-in (mean 2.46 -> 2.23, -9 %); in process "
    "(one thread) 1.75 -> 1.66 ms"
)
ROPC_REFRESH_PLAIN_BEFORE = (
    "main d376b34 (the refresh token's row by a Core insert in an ORM session after the sign-in's plain unit): "
    "Entra alone, section 2's ROPC scenario, 16 connections, 8 s, main and the change interleaved: 2.252, 2.292 -> "
    "1.915, 1.997 ms of Entra's CPU per sign-in (mean 2.27 -> 1.96, -14 %), load average 9.3-17.1; the same change "
    "as a measurement patch 3 + 3: 2.340, 2.120, 2.223 -> 1.896, 1.888, 1.988 ms, load average 11-17"
)
DISCOVERY_PLAIN_BEFORE = (
    "the 09:00 idle full run of 2026-11-26 (main 30ff732, section 4, 1,000 devices: 16.0 onboardings/s, 56.2 ms of "
    "the services' CPU, Entra 21.4 ms per onboarding), before every plain-SQL unit of this round (DRS join, device "
    "token, ROPC and these reads). The reads alone: Entra alone, user realm + DRS discovery + OpenID configuration "
    "in turn, 16 keep-alive connections, 8 s, main 65cf4a8 and the change interleaved 3 + 3: 0.367, 0.390, 0.434 -> "
    "0.223, 0.220, 0.234 ms of Entra's CPU per request (mean 0.40 -> 0.23; four such requests per onboarding), load "
    "average 10.8-12.8"
)
PRT_PLAIN_BEFORE = (
    "the 09:00 idle full run of 2026-11-26 (main 30ff732, section 4, 1,000 devices: 16.0 onboardings/s, 56.2 ms of "
    "the services' CPU, Entra 21.4 ms per onboarding), before every plain-SQL unit of this round. The PRT sign-in "
    "alone (srv_challenge + the device-signed password grant with scope openid aza ugs, as CloudAP sends it): Entra "
    "alone, 16 keep-alive connections, 8 s, main 88cafd5 and the change interleaved 3 + 3: 2.837, 2.881, 2.972 -> "
    "2.516, 2.392, 2.252 ms of Entra's CPU per sign-in (mean 2.90 -> 2.39), load average 7.5-10.6"
)
SIGNED_CERTS_BEFORE = (
    "main 18fc97c (the device certificate in a signed request's x5c decoded, loaded, checked against the CA's "
    "signature and hashed on every request, ~0.1 ms of CPU in process): Entra alone, section 2's device token "
    "scenario, 16 keep-alive connections, 8 s, main and the change interleaved 3 + 3, load average 6.2-13.3: 1.579, "
    "1.734, 1.804 -> 1.388, 1.490, 1.596 ms of Entra's CPU per device token (mean 1.71 -> 1.49; workers 1.12 -> "
    "0.91, event-loop thread 0.51 -> 0.50)"
)
KNOWN_BEARER_BEFORE = (
    "main 18fc97c (the join's DRS bearer token read and verified by PyJWT on every join, ~0.1 ms of CPU beyond its "
    "RSA verification; the administrators' SIDs derived from the tenant ID per join): Entra alone, section 2's DRS "
    "join scenario (one user's DRS token, a new device per join), 16 keep-alive connections, 8 s, main and the "
    "change (with the device certificates read once, e7e3d80) interleaved 2 + 2, load average 9.8-11.2: 1.396, "
    "1.437 -> 1.199, 1.212 ms of Entra's CPU per join (mean 1.42 -> 1.21; workers 1.15 -> 0.96)"
)
KNOWN_HEADERS_BEFORE = (
    "main 98f3fa7 (a device-signed request's ~2.5 KB JOSE header, its certificate in x5c, decoded twice per "
    "request: to pick the verifier, then by jwt_peek's loading with its canonical-encoding check): Entra alone, "
    "section 2's device token scenario, 16 keep-alive connections, 8 s, main and the change interleaved 3 + 3, load "
    "average 8.4-9.2: 1.416, 1.507, 1.539 -> 1.374, 1.443, 1.429 ms of Entra's CPU per device token (mean 1.49 -> "
    "1.42; workers 0.92 -> 0.85)"
)
ENTRA_FIXES = (
    Fix(
        "Entra token (ROPC, v1)",
        "the token endpoints and the DRS join answered by their own handlers on the lean ASGI path (the lab "
        "middleware and Entra's error handler kept; FastAPI's layers skipped) (cmglab/services/entra/lean.py, "
        "cmglab/runtime/fastpath.py)",
        "entra",
        rps=112.1,
        p50_ms=None,
        server_cpu_ms=3.12,
        process_cpu_ms=3.12,
        before=ENTRA_LEAN_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "srv_challenge and the signed request on the lean ASGI path (cmglab/services/entra/lean.py)",
        "entra",
        rps=95.5,
        p50_ms=None,
        server_cpu_ms=3.32,
        process_cpu_ms=3.32,
        before=ENTRA_LEAN_BEFORE,
    ),
    Fix(
        floor.DRS_JOIN,
        "the DRS join on the lean ASGI path (cmglab/services/entra/lean.py)",
        "entra",
        rps=153.4,
        p50_ms=None,
        server_cpu_ms=2.6,
        process_cpu_ms=2.6,
        before=ENTRA_LEAN_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "the srv_challenge nonce added and spent by prebuilt Core statements on the session's connection (the "
        "DELETE is still the use, committed at once) (cmglab/services/entra/store.py)",
        "entra",
        rps=113.6,
        p50_ms=None,
        server_cpu_ms=4.02,
        process_cpu_ms=4.02,
        before=CORE_WRITES_BEFORE,
    ),
    Fix(
        floor.DRS_JOIN,
        "the new device row one prebuilt Core insert, the bearer verified with a public key derived once "
        "(cmglab/services/entra/registration.py, tokens.py)",
        "entra",
        rps=212.1,
        p50_ms=None,
        server_cpu_ms=2.86,
        process_cpu_ms=2.86,
        before=CORE_WRITES_BEFORE,
    ),
    Fix(
        "Entra token (ROPC, v1)",
        "tenants and apps from a per-process cache checked against a directory generation row once per request "
        "(renewed by every add and reset, in any worker), and the refresh token written by one Core insert "
        "(cmglab/services/entra/store.py, issuance.py)",
        "entra",
        rps=184.7,
        p50_ms=None,
        server_cpu_ms=3.76,
        process_cpu_ms=3.76,
        before=DIRECTORY_CACHE_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "the device's tenant and the resource's app from the per-process directory cache "
        "(cmglab/services/entra/store.py)",
        "entra",
        rps=155.3,
        p50_ms=None,
        server_cpu_ms=4.55,
        process_cpu_ms=4.55,
        before=DIRECTORY_CACHE_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "srv_challenge: expired nonces pruned every 10 s per process instead of per nonce (a use still refuses an "
        "expired nonce) (cmglab/services/entra/store.py)",
        "entra",
        rps=139.1,
        p50_ms=None,
        server_cpu_ms=5.08,
        process_cpu_ms=5.08,
        before=NONCE_PRUNE_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "the device-signed request's JOSE header decoded once (it only picks the verifier; PyJWT's decode still "
        "parses and checks the whole request) instead of twice by PyJWT's per-character check "
        "(cmglab/services/entra/grants.py)",
        "entra",
        rps=135.0,
        p50_ms=None,
        server_cpu_ms=5.76,
        process_cpu_ms=5.76,
        before=DEVICE_TOKEN_HEADER_BEFORE,
    ),
    Fix(
        "Entra token (ROPC, v1)",
        "the smart lockout state read and reset in the sign-in's own session: one session per ROPC instead of "
        "three (cmglab/services/entra/lockout.py, issuance.py)",
        "entra",
        rps=231.3,
        p50_ms=None,
        server_cpu_ms=4.26,
        process_cpu_ms=4.26,
        before=ROPC_LOCKOUT_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "srv_challenge's nonce issued and the signed request's nonce spent each in one Core transaction on a pooled "
        "connection instead of an ORM session (the DELETE is still the use, committed at once) "
        "(cmglab/services/entra/store.py, grants.py, prt.py)",
        "entra",
        rps=29.4,
        p50_ms=None,
        server_cpu_ms=9.63,
        process_cpu_ms=9.63,
        before=NONCE_CORE_BEFORE,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "every service process freezes its startup heap once it serves (gc.freeze): full collections (the "
        "acceptor's trim after 64 handshakes, the automatic ones) no longer walk the modules and the app, ~60-80 ms "
        "of CPU each in Entra before (cmglab/runtime/server.py)",
        "entra",
        rps=GC_FREEZE_BEFORE_RPS,
        p50_ms=None,
        server_cpu_ms=GC_FREEZE_BEFORE_MS,
        process_cpu_ms=GC_FREEZE_BEFORE_ENTRA_MS,
        before=GC_FREEZE_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "the user realm (twice per onboarding) and DRS discovery read the domain from the per-process directory "
        "cache (renewed with the directory generation) instead of two ORM lookups "
        "(cmglab/services/entra/store.py, routes_oidc.py, registration.py)",
        "entra",
        rps=DOMAIN_CACHE_BEFORE_RPS,
        p50_ms=None,
        server_cpu_ms=DOMAIN_CACHE_BEFORE_MS,
        process_cpu_ms=DOMAIN_CACHE_BEFORE_ENTRA_MS,
        before=DOMAIN_CACHE_BEFORE,
        onboarding=True,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "the device-signed request's device row read by one prebuilt Core select of the columns the check and the "
        "issuance read (DeviceFacts), not as an ORM entity; the same checks (enabled, thumbprint, tenant) "
        "(cmglab/services/entra/store.py, grants.py, prt.py)",
        "entra",
        rps=247.6,
        p50_ms=None,
        server_cpu_ms=2.45,
        process_cpu_ms=2.45,
        before=DEVICE_FACTS_BEFORE,
    ),
    Fix(
        floor.DRS_JOIN,
        "the join's user read by one prebuilt Core select (UserFacts: the same enabled/exists check); the device "
        "certificate from a LeafIssuer made once per CA (issuer name, constant extensions and authority key "
        "identifier prebuilt, the builder given its extensions in one list), the same certificate "
        "(cmglab/services/entra/store.py, registration.py, drs.py, cmglab/pki/builders.py)",
        "entra",
        rps=178.0,
        p50_ms=None,
        server_cpu_ms=2.44,
        process_cpu_ms=2.44,
        before=DRS_JOIN_LEAN_BEFORE,
    ),
    Fix(
        "Entra token (ROPC, v1)",
        "the password sign-in reads its user and the lockout row by one prebuilt Core select (users LEFT JOIN "
        "lockouts: SignInFacts), not an ORM select and an ORM get; the same checks in the same order, a right "
        "password clears the count by one UPDATE (cmglab/services/entra/store.py, issuance.py)",
        "entra",
        rps=179.0,
        p50_ms=None,
        server_cpu_ms=2.75,
        process_cpu_ms=2.75,
        before=SIGN_IN_FACTS_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "the device-signed request verified by jwt_peek.decode (jwt.decode: PyJWT's checks and errors, the token "
        "loaded by one regular expression per segment instead of PyJWT's per-character scan); the srv_challenge "
        "nonce issued and spent in plain-SQL units of work on a pooled driver connection, not a Core transaction "
        "each (the DELETE is still the use, committed at once) (cmglab/wire/jwt_peek.py, "
        "cmglab/services/entra/grants.py, tokens.py, store.py)",
        "entra",
        rps=182.5,
        p50_ms=None,
        server_cpu_ms=2.49,
        process_cpu_ms=2.49,
        before=JWS_NONCE_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "Entra's lean handlers (token grants, DRS join, discovery reads) hand their work to Entra's own threads by "
        "the event loop's executor (runtime/offload.py, the same hop as the MP's off_loop) instead of Starlette's "
        "run_in_threadpool (cmglab/runtime/offload.py, cmglab/services/entra/parts.py, routes_token.py, "
        "routes_drs.py, lean.py)",
        "entra",
        rps=314.0,
        p50_ms=None,
        server_cpu_ms=2.56,
        process_cpu_ms=2.56,
        before=ENTRA_OFFLOAD_BEFORE,
    ),
    Fix(
        floor.DRS_JOIN,
        "Entra's lean handlers (token grants, DRS join, discovery reads) hand their work to Entra's own threads by "
        "the event loop's executor (runtime/offload.py, the same hop as the MP's off_loop) instead of Starlette's "
        "run_in_threadpool (cmglab/runtime/offload.py, cmglab/services/entra/parts.py, routes_token.py, "
        "routes_drs.py, lean.py)",
        "entra",
        rps=361.0,
        p50_ms=None,
        server_cpu_ms=2.47,
        process_cpu_ms=2.47,
        before=ENTRA_OFFLOAD_BEFORE,
    ),
    Fix(
        "Entra token (ROPC, v1)",
        "Entra's lean handlers (token grants, DRS join, discovery reads) hand their work to Entra's own threads by "
        "the event loop's executor (runtime/offload.py, the same hop as the MP's off_loop) instead of Starlette's "
        "run_in_threadpool (cmglab/runtime/offload.py, cmglab/services/entra/parts.py, routes_token.py, "
        "routes_drs.py, lean.py)",
        "entra",
        rps=358.0,
        p50_ms=None,
        server_cpu_ms=2.62,
        process_cpu_ms=2.62,
        before=ENTRA_OFFLOAD_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "the device-signed request checked and the device token issued in a plain-SQL unit of work (Store.plain: "
        "the directory generation, the device and tenant read by fixed statements on a pooled driver connection, "
        "no ORM session); the same checks in the same order, the nonce still spent in its own unit "
        "(cmglab/services/entra/store.py, grants.py)",
        "entra",
        rps=172.9,
        p50_ms=None,
        server_cpu_ms=2.47,
        process_cpu_ms=2.47,
        before=PLAIN_UNITS_BEFORE,
    ),
    Fix(
        floor.DRS_JOIN,
        "the DRS join in one plain-SQL unit of work (Store.plain: the generation, tenant, user and quota read and "
        "the device row written by one INSERT of the ORM's columns and values on a pooled driver connection, "
        "committed whole or not at all) (cmglab/services/entra/store.py, registration.py)",
        "entra",
        rps=235.0,
        p50_ms=None,
        server_cpu_ms=2.14,
        process_cpu_ms=2.14,
        before=PLAIN_UNITS_BEFORE,
    ),
    Fix(
        "Entra token (ROPC, v1)",
        "the password grant's checks and sign-in in a plain-SQL unit of work (Store.plain: the directory "
        "generation, the user with the lockout row and a lockout reset by fixed statements on a pooled driver "
        "connection), the reply and its refresh token in a session after it (cmglab/services/entra/grants.py, "
        "store.py)",
        "entra",
        rps=185.4,
        p50_ms=None,
        server_cpu_ms=2.46,
        process_cpu_ms=2.46,
        before=ROPC_PLAIN_BEFORE,
    ),
    Fix(
        "Entra token (ROPC, v1)",
        "ROPC in one plain-SQL unit of work: the refresh token's row (the same columns and values) by one plain "
        "INSERT in the sign-in's unit, committed with it, instead of a Core insert in an ORM session after it "
        "(cmglab/services/entra/issuance.py, grants.py)",
        "entra",
        rps=182.1,
        p50_ms=None,
        server_cpu_ms=2.27,
        process_cpu_ms=2.27,
        before=ROPC_REFRESH_PLAIN_BEFORE,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "the user realm, DRS discovery and the OpenID configuration's tenant read in a plain-SQL unit (Store.plain: "
        "the directory generation by one fixed statement, the domain and tenant from the per-process cache) instead "
        "of an ORM session each (cmglab/services/entra/routes_oidc.py, registration.py)",
        "entra",
        rps=16.0,
        p50_ms=None,
        server_cpu_ms=56.2,
        process_cpu_ms=21.4,
        before=DISCOVERY_PLAIN_BEFORE,
        onboarding=True,
    ),
    Fix(
        ONBOARDING_SERVICES,
        "the PRT sign-in (the device-signed password grant) in one plain-SQL unit: the client, the user with the "
        "lockout row and the PRT's row by fixed statements, committed together, instead of an ORM session after the "
        "device's checks (cmglab/services/entra/grants.py, prt.py)",
        "entra",
        rps=16.0,
        p50_ms=None,
        server_cpu_ms=56.2,
        process_cpu_ms=21.4,
        before=PRT_PLAIN_BEFORE,
        onboarding=True,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "a device certificate read, checked against the CA's signature and hashed once per certificate text "
        "(drs.SignedCertificates, bounded): its validity, the request's signature, the device row and the nonce "
        "still checked on every request (cmglab/services/entra/drs.py, grants.py)",
        "entra",
        rps=289.0,
        p50_ms=None,
        server_cpu_ms=1.71,
        process_cpu_ms=1.71,
        before=SIGNED_CERTS_BEFORE,
    ),
    Fix(
        floor.DRS_JOIN,
        "a DRS bearer token verified once per token text for the same audiences (Signer.verify): its lifetime "
        "checked again on each join as PyJWT checks it, its user read from the store per join; the tenant's "
        "administrator SIDs derived once per tenant (cmglab/services/entra/tokens.py, registration.py)",
        "entra",
        rps=233.0,
        p50_ms=None,
        server_cpu_ms=1.42,
        process_cpu_ms=1.42,
        before=KNOWN_BEARER_BEFORE,
    ),
    Fix(
        floor.DEVICE_TOKEN,
        "a device-signed request's JOSE header known by its exact text after its first decoding (the verifier's "
        "choice and jwt_peek.decode's loading; bounded, a copy per use); the payload, the signature and PyJWT's "
        "checks per request (cmglab/wire/jwt_peek.py, cmglab/services/entra/grants.py)",
        "entra",
        rps=310.0,
        p50_ms=None,
        server_cpu_ms=1.49,
        process_cpu_ms=1.49,
        before=KNOWN_HEADERS_BEFORE,
    ),
)

# the shared runtime's per-request layer (cmglab/runtime/): interleaved, Entra and the MP up in one fresh lab per run
# (pki, entra, management-point pinned to CPU 0, the load on CPU 1), section 1's ceiling in the same run
HOP_OWN_THREADS_BEFORE = (
    "the idle full run of 2026-11-26 12:06 (main 63254ae), section 2. Interleaved: main 18fc97c and the change, "
    "a fresh lab per run, 16 connections, 8 s, 4 + 4 runs (A B A B, then B A A B), load 6.7-14, CPU per request: "
    "ROPC 1.874 -> 1.667 ms (-11 %; event-loop thread 0.322 -> 0.241), device token 1.717 -> 1.608 (-6 %; loop "
    "0.541 -> 0.466), CCM_STS (Certificate) 1.037 -> 1.013 (-2 %; loop 0.315 -> 0.292), location 0.477 -> 0.474 and "
    "policy 0.686 -> 0.696 (within the noise; loop 0.224 -> 0.212, 0.238 -> 0.229), section 1's trivial endpoint "
    "(no hop) 0.165 / 0.171 (noise). In process, 16 callers on uvloop: 16 -> 8.5 us of CPU per hop beyond the work"
)
_HOP_OWN_THREADS = (
    "the thread hop (runtime/offload.py Offload.run, Entra's and the MP's off_loop) hands the work to an idle "
    "thread of its own (the most recently idle) and resumes the caller by one call_soon_threadsafe, instead of a "
    "ThreadPoolExecutor's concurrent future chained to an asyncio future (a Condition notified in Python, two "
    "callbacks and state copies, an idle Semaphore per submit)"
)
WORKERS_BATCH_BEFORE = (
    "the idle full run of 2026-11-26 12:06 (main 63254ae), section 2. Interleaved: main fca7885 (with the own-thread "
    "hop) and the change, a fresh lab per run, 16 connections, 8 s, 2 + 2 runs (balanced order), load 5.3-12.4, CPU "
    "per request: location 0.479 -> 0.399 ms (-17 %), policy 0.678 -> 0.613 (-10 %), CCM_STS (Certificate) 1.005 -> "
    "0.946 (-6 %), device token 1.394 -> 1.268 (-9 %), ROPC 1.676 -> 1.613 (-4 %); involuntary context switches per "
    "request 1.7-3.7 -> 0.2-1.1; section 1's trivial endpoint (no workers) 0.160 / 0.184 (noise: untouched)"
)
_WORKERS_BATCH = (
    "the hop's worker threads run as SCHED_BATCH (runtime/offload.py): the same CPU share, but a worker handed "
    "its work no longer preempts the event loop only to find the GIL held and sleep again"
)
YOUNG_GC_BEFORE = (
    "the idle full run of 2026-11-26 12:06 (main 63254ae), section 2. Interleaved: main 51fee1b and the change, a "
    "fresh lab per run, 16 connections, 8 s, 4 + 4 runs (two balanced sets), load 3.2-8.9, CPU per request: location "
    "0.346 -> 0.331 ms (-4.5 %, each run below every main run), policy 0.611 -> 0.590, CCM_STS (Certificate) 0.953 "
    "-> 0.921, device token 1.279 -> 1.211, ROPC 1.659 -> 1.599; section 1's trivial endpoint 0.152 / 0.153 "
    "(nothing). The MP under location and policy load: 876 young, 79 middle and 8 full collections, ~7.6 us of CPU "
    "per request, before"
)
_YOUNG_GC = (
    "a service process collects its young generation every 20,000 net allocations instead of 700 (runtime/server.py "
    "freeze_startup_heap): the objects of the requests in flight are freed by reference counting before a "
    "collection walks them and promotes them to be walked again"
)
RUNTIME_FIXES = (
    Fix("Entra token (ROPC, v1)", _HOP_OWN_THREADS, "entra", 564.0, 24.989, 1.76, 1.76, before=HOP_OWN_THREADS_BEFORE),
    Fix(floor.DEVICE_TOKEN, "the same", "entra", 602.0, 25.303, 1.65, 1.65, before=HOP_OWN_THREADS_BEFORE),
    Fix(scenarios.MP_STS, "the same", "management-point", 923.0, 16.139, 1.08, 1.08, before=HOP_OWN_THREADS_BEFORE),
    Fix(
        scenarios.MP_LOCATION,
        _WORKERS_BATCH,
        "management-point",
        2043.0,
        7.644,
        0.49,
        0.49,
        before=WORKERS_BATCH_BEFORE,
    ),
    Fix(scenarios.MP_POLICY, "the same", "management-point", 1211.0, 11.931, 0.82, 0.82, before=WORKERS_BATCH_BEFORE),
    Fix(floor.DEVICE_TOKEN, "the same", "entra", 602.0, 25.303, 1.65, 1.65, before=WORKERS_BATCH_BEFORE),
    Fix(scenarios.MP_LOCATION, _YOUNG_GC, "management-point", 2043.0, 7.644, 0.49, 0.49, before=YOUNG_GC_BEFORE),
    Fix(scenarios.MP_STS, "the same", "management-point", 923.0, 16.139, 1.08, 1.08, before=YOUNG_GC_BEFORE),
    Fix(floor.DEVICE_TOKEN, "the same", "entra", 602.0, 25.303, 1.65, 1.65, before=YOUNG_GC_BEFORE),
)


def _profiled(lab: Lab) -> list[tuple[scenarios.Scenario, tuple[str, ...]]]:
    return [(scenarios.entra_token(lab), ("entra",)), *((s, CMG_PATH) for s in scenarios.through_cmg(lab))]


def profile_section(lab: Lab, service_pids: dict[str, int], duration: float) -> list[dict[str, Any]] | str:
    """Each profiled scenario under load with py-spy on its processes; a string says why nothing was sampled."""
    if not profile.available():
        return "py-spy is not installed (pip install py-spy): no profiles."
    seconds = max(duration, MIN_SECONDS)
    found = []
    for s, names in _profiled(lab):

        def repeat(_i: int, request: loadgen.Request = s.request) -> loadgen.Request:
            return request

        chosen = {name: service_pids[name] for name in names}
        meter = CpuMeter(chosen)
        sampler = profile.Sampler(chosen, seconds)
        result = loadgen.run_sync(s.name, s.target, repeat, connections=16, duration=seconds)
        try:
            stacks = sampler.stacks()
        except RuntimeError as e:  # no ptrace here (not root, no CAP_SYS_PTRACE)
            return str(e)
        cpu = meter.per_request(result.requests)
        for name in names:
            found.append(
                {
                    "scenario": s.name,
                    "process": name,
                    "rps_while_sampled": round(result.rps, 1),
                    "cpu_ms_per_request": cpu.get(name, 0.0),
                    "busy_samples": sum(profile.busy(stacks[name]).values()),
                    "frames": profile.top_frames(stacks[name]),
                }
            )
    return found


# The bench's own load generator, which shares the 2 CPUs with the workers in section 8: its CPU per request
# (the bench process' CPU time / requests), section 8's set-up (Entra and the MP with 2 workers, worker k on
# CPU k, the generator unpinned), 16 keep-alive connections, 6 s, old and new generator interleaved.
LOADGEN_BEFORE = (
    "main 4ff9550 (asyncio streams: a coroutine per connection, StreamReader, asyncio's TLS), section 8's "
    "2 workers, 16 connections, 6 s, mean of 2 runs interleaved with 2 of the change, load average 15.5-21.9"
)
LOADGEN_CHANGE = (
    "one protocol per connection on uvloop (TLS in C), the next request written from the reply's callback: no "
    "task switch, future or StreamReader per request; a repeated request encoded once (loadgen.py)"
)
# scenario, the generator's CPU ms per request before, and with the change in the same interleaved runs
LOADGEN_FIXES: tuple[tuple[str, float, float], ...] = (
    ("Entra token (ROPC, v1)", 0.168, 0.096),
    (scenarios.MP_STS, 0.105, 0.069),
    (scenarios.MP_LOCATION, 0.072, 0.050),
)


def loadgen_table(workers: dict[str, Any]) -> dict[str, Any]:
    """The generator's change, before and after; after: section 8's rows with the most workers in this run."""
    rows = workers.get("rows") or []
    most = max((r["workers"] for r in rows), default=0)
    now = {r["name"]: r for r in rows if r["workers"] == most}
    return {
        "title": "The load generator's own CPU per request (section 8; added after it runs): "
        + LOADGEN_CHANGE
        + ". ab_cpu_ms: the change in the interleaved runs 'before' was measured with; after_cpu_ms: this run.",
        "columns": ["scenario", "before_cpu_ms", "ab_cpu_ms", "after_cpu_ms", "before"],
        "rows": [
            {
                "scenario": name,
                "before_cpu_ms": before,
                "ab_cpu_ms": ab,
                "after_cpu_ms": now.get(name, {}).get("loadgen_cpu_ms"),
                "before": LOADGEN_BEFORE,
            }
            for name, before, ab in LOADGEN_FIXES
        ],
    }


WRITERS_BEFORE = (
    "main 77d244d, section 8's ROPC rows (workers pinned, 16 connections, 5 s), 6 runs of each interleaved with 5-6 "
    "of the change, load average 11-23 (scaling unreadable at that load: the wait and hold are the measure)"
)
WRITERS_CHANGE = (
    "SQLite's writers take turns through a lock that wakes the next one at once (a thread lock, then flock beside "
    "the database, from a transaction's first write to its commit: runtime/sqlite_writes.py) instead of SQLite's "
    "busy handler, which sleeps 1, 2, 5, 10... ms between tries; Entra signs the ID token before the refresh "
    "token's insert, so the write lock is no longer held across a signature (issuance.py)"
)
# scenario; before: section 8's scaling and worker_cpus in the idle run of 2026-11-26 09:00; the A/B (2 workers):
# wall ms a sign-in waited in the refresh-token insert, and held the write lock after it, before -> after
WRITERS_FIXES: tuple[tuple[str, float, str, str, str], ...] = (
    ("Entra token (ROPC, v1)", 1.46, "0.77+0.90", "40.4 -> 17.1", "3.5 -> 0.98"),
)


def writers_table(workers: dict[str, Any]) -> dict[str, Any]:
    """The SQLite writers' change, before and after; after: section 8's rows with the most workers in this run."""
    rows = workers.get("rows") or []
    most = max((r["workers"] for r in rows), default=0)
    now = {r["name"]: r for r in rows if r["workers"] == most}
    return {
        "title": "Writers of one SQLite store in several worker processes (section 8; added after it runs): "
        + WRITERS_CHANGE
        + ". insert_wait_ms / lock_held_ms: the interleaved runs 'before' was measured with (wall time per sign-in, "
        "instrumented there only); after: this run.",
        "columns": [
            "scenario",
            "before_scaling",
            "after_scaling",
            "before_worker_cpus",
            "after_worker_cpus",
            "insert_wait_ms",
            "lock_held_ms",
            "before",
        ],
        "rows": [
            {
                "scenario": name,
                "before_scaling": scaling,
                "after_scaling": now.get(name, {}).get("scaling"),
                "before_worker_cpus": cpus,
                "after_worker_cpus": now.get(name, {}).get("worker_cpus"),
                "insert_wait_ms": wait,
                "lock_held_ms": held,
                "before": WRITERS_BEFORE,
            }
            for name, scaling, cpus, wait, held in WRITERS_FIXES
        ],
    }


def _rows_by_name(sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for key in ("services", "cmg_path") for row in sections.get(key, {}).get("rows", [])}


def _onboarding_now(sections: dict[str, Any], scenario: str = ONBOARDING) -> dict[str, Any]:
    """Section 4's smallest fleet as a row of this table: onboardings/s, and the devices' CPU per onboarding
    (ONBOARDING_SERVICES: every service's together, and each one's)."""
    section = sections.get("onboarding", {})
    rows = section.get("rows") or []
    if not rows:
        return {}
    row = rows[0]
    if scenario != ONBOARDING_SERVICES:
        cpu = round(1000 * row["devices_cpu_s"] / row["succeeded"], 1) if row["succeeded"] else None
        return {"rps": row["onboardings_per_s"], "server_cpu_ms": cpu, "cpu_ms_per_service": {"devices": cpu}}
    tables = section.get("tables") or [{}]
    per_service = {
        r["service"]: r["cpu_ms_per_onboarding"] for r in tables[0].get("rows", []) if r["devices"] == row["devices"]
    }
    total = round(1000 * row["services_cpu_s"] / row["succeeded"], 1) if row["succeeded"] else None
    return {"rps": row["onboardings_per_s"], "server_cpu_ms": total, "cpu_ms_per_service": per_service}


def _memory_table(sections: dict[str, Any]) -> dict[str, Any]:
    rows = sections.get("connections", {}).get("rows") or [{}]
    now = rows[0].get("kb_per_connection")
    return {
        "title": f"Memory per idle keep-alive mutual-TLS connection at the CMG (section 5 in this run: {now} KB; "
        "the storm row: what a connection storm leaves behind, section 7). " + MEMORY_SPLIT,
        "columns": ["change", "before_kb", "after_kb", "before"],
        "rows": [{"change": c, "before_kb": b, "after_kb": a, "before": how} for c, b, a, how in MEMORY_FIXES],
    }


def section(profiles: list[dict[str, Any]] | str | None, sections: dict[str, Any]) -> dict[str, Any]:
    now = _rows_by_name(sections)
    fixes = []
    for f in (*FIXES, *MP_FIXES, *DEVICE_FIXES, *ENTRA_FIXES, *RUNTIME_FIXES):
        after = _onboarding_now(sections, f.scenario) if f.onboarding else now.get(f.scenario, {})
        fixes.append(
            {
                "scenario": f.scenario,
                "change": f.change,
                "before": f.before or BEFORE,
                "before_rps": f.rps,
                "after_rps": after.get("rps"),
                "before_p50_ms": f.p50_ms,
                "after_p50_ms": after.get("p50_ms"),
                "before_cpu_ms": f.server_cpu_ms,
                "after_cpu_ms": after.get("server_cpu_ms"),
                "process": f.process,
                "before_process_cpu_ms": f.process_cpu_ms,
                "after_process_cpu_ms": after.get("cpu_ms_per_service", {}).get(f.process),
            }
        )
    tables = [
        {
            "title": "Before and after the fixes (before: measured as its column says; after: this run, at its own "
            "settings). "
            "cpu_ms: CPU time per request of every service process; process_cpu_ms: of the process "
            "the change is in",
            "columns": [
                "scenario",
                "change",
                "before_rps",
                "after_rps",
                "before_p50_ms",
                "after_p50_ms",
                "before_cpu_ms",
                "after_cpu_ms",
                "process",
                "before_process_cpu_ms",
                "after_process_cpu_ms",
                "before",
            ],
            "rows": fixes,
        },
        _memory_table(sections),
    ]
    if profiles is None:
        note = "Not profiled in this run (--quick or --no-profile). "
    elif isinstance(profiles, str):
        note = profiles + " "
    else:
        note = (
            "py-spy at 200 Hz on each process of the scenario while 16 keep-alive connections drive it; "
            "shares of the busy samples (idle event loop and waiting threads left out). Wall-clock samples: "
            "a process waiting for the shared core counts where it was preempted, which inflates socket "
            "sends that wake another service. "
        )
        for p in profiles:
            tables.append(
                {
                    "title": f"{p['scenario']} — {p['process']} ({p['cpu_ms_per_request']} ms CPU per "
                    f"request, {p['busy_samples']} busy samples, {p['rps_while_sampled']} req/s "
                    "while sampled)",
                    "columns": ["frame", "total_pct", "self_pct"],
                    "rows": p["frames"],
                }
            )
    return {
        "title": "6. Profiles",
        "note": note + FINDINGS,
        "profiled": profiles if isinstance(profiles, list) else [],
        "tables": tables,
    }
