"""The floor of each measured operation: what one request must cost on one core, whatever the code.

floor_ms(endpoint) = the keep-alive transport cost (section 1's server CPU per request of a trivial endpoint on
the same runtime) + the cryptographic operations the protocol requires for that request, each timed here,
in-process, in the same run, with the lab's own keys. Anything above the floor is Python and framework overhead
(parsing, routing, logging, the database, copies), which is what the profiles are for.

`INVENTORY` is the one table of what each hot endpoint must do cryptographically, and why. It counts what the
protocol requires, not what the code happens to do: a verification that could be cached (a JWKS, a parsed
certificate) is not counted; a TLS handshake is counted only where a request needs a new connection (the bench's
scenarios use keep-alive connections, so a per-request row has none; an onboarding has several, see
`ONBOARDING`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from cmglab.runtime.lab import Lab
from cmglab.services.entra.store import PBKDF2_ROUNDS
from cmglab.tools.fleet.steps import label
from cmglab.wire.tracing import Step

# -- the primitives ------------------------------------------------------------------------------------

# what each primitive is, as the report's crypto table names it
PRIMITIVES = {
    "rsa_sign": "RSA-2048 PKCS#1 v1.5 SHA-256 signature (a certificate, a signed blob)",
    "rsa_verify": "RSA-2048 PKCS#1 v1.5 SHA-256 verification",
    "jwt_encode": "PyJWT RS256 encode of a token (claims + one RSA-2048 signature)",
    "jwt_decode": "PyJWT RS256 decode of a token (one RSA-2048 verification + claims checks)",
    "pbkdf2": f"PBKDF2-HMAC-SHA256, {PBKDF2_ROUNDS:,} rounds (as Entra's store is configured)",
    "rsa_oaep": "RSA-2048 OAEP (SHA-1) encryption of a 24-byte content key (CMS key transport)",
    "tls_handshake": "server CPU of a new mutual-TLS connection (section 1: handshake row minus keep-alive row)",
}


@dataclass(frozen=True)
class Need:
    """What one request to an endpoint must do cryptographically."""

    ops: dict[str, int]
    reason: str


# The endpoints' cryptographic inventory (each count is per request; the scenario names are section 2's rows).
ROPC = "Entra token (ROPC, v1)"
DEVICE_TOKEN = "Entra device token (jwt-bearer, device certificate)"
DRS_JOIN = "Entra DRS join"
PRT_SIGN_IN = "Entra PRT (device-signed password grant)"
STS_CERT = "MP CCM_STS (Certificate proof)"
STS_AAD = "MP CCM_STS (AAD proof)"
STS_BULK = "MP CCM_STS (BulkRegistration proof)"
STS_CLIENT = "MP CCM_STS (ClientToken proof)"
LOCATION = "MP location request (ccm_system_tokenauth)"
REGISTRATION = "MP registration (PKI client)"
POLICY = "MP policy assignments (signed request)"
POLICY_BODY = "MP secret policy body"
CMG_FORWARD = "CMG + connection point forwarding one request"

INVENTORY: dict[str, Need] = {
    ROPC: Need(
        {"pbkdf2": 1, "jwt_encode": 2},
        "the password against its stored PBKDF2 hash; a v1 user reply carries an access and an ID token, "
        "each signed (the refresh token is random bytes and a SHA-256)",
    ),
    DEVICE_TOKEN: Need(
        {"rsa_verify": 1, "jwt_decode": 1, "jwt_encode": 1},
        "the device certificate in x5c was issued by MS-Organization-Access (one verification); "
        "the request JWS verifies with its key; the access token is signed",
    ),
    DRS_JOIN: Need(
        {"jwt_decode": 1, "rsa_verify": 1, "rsa_sign": 1},
        "the user's DRS access token; the PKCS#10 self-signature; the device certificate signed by the device CA",
    ),
    PRT_SIGN_IN: Need(
        {"rsa_verify": 1, "jwt_decode": 1, "pbkdf2": 1, "rsa_oaep": 1, "jwt_encode": 1},
        "CloudAP's sign-in on the joined device ([MS-OAPXBC] 3.1.5.1.2): the device certificate (one verification), "
        "the request JWS, the password's PBKDF2; the new session key encrypted to the transport key; the ID "
        "token signed (the PRT itself is random bytes and a SHA-256)",
    ),
    STS_CERT: Need(
        {"jwt_encode": 1},
        "the PKI certificate was checked at the TLS handshake (per connection); the CCM token is signed",
    ),
    STS_AAD: Need(
        {"jwt_decode": 1, "jwt_encode": 1}, "the Entra token (JWKS fetched once and cached); the CCM token is signed"
    ),
    STS_BULK: Need(
        {"jwt_decode": 1, "rsa_verify": 1, "jwt_encode": 1},
        "the bulk registration token; the proof of possession (signature over token;timestamp); the "
        "CCM token is signed",
    ),
    STS_CLIENT: Need(
        {"jwt_decode": 1, "rsa_verify": 1, "jwt_encode": 1},
        "the unique client token; the proof of possession; the CCM token is signed (a renewal, "
        "every 30 days, signs one more)",
    ),
    LOCATION: Need({"jwt_decode": 1}, "the CCM token in Authorization: Bearer"),
    REGISTRATION: Need(
        {"rsa_verify": 1, "jwt_encode": 1},
        "the registration <Data> signature with the signing certificate; the unique client token "
        "is signed (the PKI certificate was checked at the handshake)",
    ),
    POLICY: Need(
        {"jwt_decode": 1, "rsa_verify": 1},
        "the CCM token (tokenauth); the PayloadSignature with the client's registered key",
    ),
    POLICY_BODY: Need(
        {"rsa_verify": 1, "rsa_oaep": 1},
        "ClientTokenSignature with the registered key; the content key encrypted to the client's "
        "encryption certificate (CMS EnvelopedData; PKCS#1 v1.5 by default, costed as OAEP)",
    ),
    CMG_FORWARD: Need(
        {"jwt_decode": 1},
        "ServerAuth: the CMG checks the CCM token before forwarding (MutualAuth: the certificate, at "
        "the handshake); channel frames and the connection point's HTTPS to the MP are transport: "
        "two more keep-alive hops",
    ),
}
CMG_HOPS = 2  # the CMG's client-facing request and the connection point's request to the MP (keep-alive both)

# Section 3's rows: the MP endpoint a request through the CMG reaches.
THROUGH_CMG = {
    "CMG -> CP -> MP CCM_STS (MutualAuth)": STS_CERT,
    "CMG -> CP -> MP location request (ServerAuth)": LOCATION,
}

# One onboarding (fleet mode), by service: the requests that need cryptography (step, inventory entry, how many).
# Every other request (discovery, realm, nonce, AAD info, site information, content location, the download, CRLs)
# costs transport only; the number of requests per onboarding is what the fleet counted in the same run.
ONBOARDING: dict[str, list[tuple[str, str, int]]] = {
    "entra": [
        ("user token for the DRS (ROPC)", ROPC, 1),
        ("DRS join", DRS_JOIN, 1),
        ("PRT at the user's sign-in", PRT_SIGN_IN, 1),
        # the join's and the install's (the fleet records 2.0 device_token requests per onboarding)
        (label(Step.TOKEN, "device"), DEVICE_TOKEN, 2),
    ],
    "management-point": [
        (label(Step.CCMSTS), STS_AAD, 1),
        (label(Step.REGISTRATION), REGISTRATION, 1),
        (label(Step.CCMSTS, "registered"), STS_AAD, 1),
        (label(Step.POLICY, "assignments"), POLICY, 1),
    ],
    "cmg": [("ServerAuth requests forwarded (token checked)", CMG_FORWARD, 4)],
    "cmg-connection-point": [],
    "pki": [],  # the CRL host
}
# full TLS handshakes per onboarding, by the service that accepts them: each of the agent's clients opens one
# connection per host; the connection point reuses its channel and MP connections. Entra: 4 connections (counted
# at its acceptor during a 200-device fleet, 2026-11-26: 803 handshakes): the join's to the login host and to the
# DRS, the PRT sign-in's and the install's device token's, each a client of its own; the CMG: 2 (ccmsetup's client,
# then ccmexec's). The agent resumes TLS sessions as Schannel does (cmglab/wire/tls_sessions.py), so only the first
# connection to each name is a full handshake: Entra 2 (login host, DRS) + 2 resumed, the CMG 1 + 1 resumed (each
# service's request records, `tls_resumed`: tests/test_agent_tls_resumption.py). A resumed handshake signs and
# verifies no certificate (an X25519 exchange and the ticket's AES): not counted.
ONBOARDING_HANDSHAKES = {"entra": 2, "cmg": 1}
# services whose part of an onboarding the fleet cannot itemise: their row has no floor (not a floor of 0) and
# their CPU still counts in the total. The CRL host serves plain HTTP (no handshake); the devices' CRL downloads
# go through the revocation checker's own client, which the fleet does not count.
NOT_ITEMISED = {"pki": "CRL downloads over plain HTTP (the revocation checker's own client: not counted)"}


# -- timing --------------------------------------------------------------------------------------------


def _batch_size(op: Callable[[], Any], min_batch_s: float) -> int:
    """Calls per batch: doubled until a batch takes `min_batch_s` of CPU (long enough to time)."""
    n = 1
    while True:
        start = time.thread_time()
        for _ in range(n):
            op()
        if time.thread_time() - start >= min_batch_s or n >= 4096:
            return n
        n *= 2


def cpu_ms_each(ops: dict[str, Callable[[], Any]], *, rounds: int = 5, min_batch_s: float = 0.05) -> dict[str, float]:
    """CPU milliseconds of one call of each op (this thread's CPU time, so a shared machine's waits do not count):
    the fastest of `rounds` batches. The rounds interleave the ops (a batch of each, then the next round), so a
    slow spell of the host (~0.3 s) slows one batch of every op rather than every batch of one."""
    for op in ops.values():
        op()  # warm: lazy imports, key caches
    sizes = {name: _batch_size(op, min_batch_s) for name, op in ops.items()}
    best = dict.fromkeys(ops, float("inf"))
    for _ in range(rounds):
        for name, op in ops.items():
            n = sizes[name]
            start = time.thread_time()
            for _ in range(n):
                op()
            best[name] = min(best[name], (time.thread_time() - start) / n)
    return {name: round(seconds * 1000, 4) for name, seconds in best.items()}


def time_primitives(lab: Lab) -> dict[str, float]:
    """Each cryptographic primitive's CPU milliseconds, with the lab's keys: Entra's token-signing key (JWTs,
    signatures). The TLS handshake is not timed here: it is section 1's (`handshake_ms`)."""
    ident = lab.pki.entra_signing
    key, cert = ident.key(), ident.cert()
    public = cert.public_key()
    claims = {
        "aud": "https://ConfigMgrService",
        "iss": "https://sts.windows.net/x/",
        "sub": "bench",
        "exp": int(time.time()) + 3600,
        "nbf": int(time.time()),
        "oid": "0" * 32,
        "deviceid": "1" * 32,
    }
    token = jwt.encode(claims, key, algorithm="RS256", headers={"x5t": "bench"})
    blob = os.urandom(256)
    signature = key.sign(blob, padding.PKCS1v15(), hashes.SHA256())
    salt = os.urandom(16)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    return cpu_ms_each(
        {
            "rsa_sign": lambda: key.sign(blob, padding.PKCS1v15(), hashes.SHA256()),
            "rsa_verify": lambda: public.verify(signature, blob, padding.PKCS1v15(), hashes.SHA256()),  # type: ignore[union-attr, call-arg, arg-type]
            "jwt_encode": lambda: jwt.encode(claims, key, algorithm="RS256", headers={"x5t": "bench"}),
            "jwt_decode": lambda: jwt.decode(
                token,
                public,  # type: ignore[arg-type]
                algorithms=["RS256"],
                audience="https://ConfigMgrService",
            ),
            "pbkdf2": lambda: hashlib.pbkdf2_hmac("sha256", b"Passw0rd!lab", salt, PBKDF2_ROUNDS),
            "rsa_oaep": lambda: public.encrypt(os.urandom(24), oaep),  # type: ignore[union-attr]
        }
    )


def handshake_ms(keepalive_ms: float, handshake_row_ms: float) -> dict[str, float]:
    """The TLS handshake's server CPU from section 1's two rows (a new connection per request minus keep-alive)."""
    return {"tls_handshake": round(max(0.0, handshake_row_ms - keepalive_ms), 4)}


# when the primitives are timed in a full run (the report's columns): a host's speed drifts over minutes, so
# one timing can land on a slow spell and raise every floor that holds it
MOMENTS = {
    "after_s1_ms": "after section 1, before section 2",
    "after_s3_ms": "after sections 2-3 (and 6's profiles), the services stopped",
    "end_ms": "at the end of the run, before the report is written",
}


def fastest(timings: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each primitive's lowest CPU time over the timings (moment -> primitive -> ms; a timing may lack some).
    The floor is the least the host can do, so the fastest timing is the one used: a slower one measured the
    host's spell, not the operation."""
    used: dict[str, float] = {}
    for timing in timings.values():
        for op, ms in timing.items():
            used[op] = min(ms, used.get(op, ms))
    return used


# -- floors --------------------------------------------------------------------------------------------


def crypto_ms(need: Need, prims: dict[str, float]) -> float:
    return sum(prims[op] * n for op, n in need.ops.items())


def floor_ms(endpoint: str, prims: dict[str, float], transport_ms: float, requests: int = 1) -> float:
    """`requests`: keep-alive requests per operation (a device token asks for its nonce first: 2)."""
    return round(requests * transport_ms + crypto_ms(INVENTORY[endpoint], prims), 4)


def cmg_floor_ms(endpoint: str, prims: dict[str, float], transport_ms: float) -> float:
    """Through the CMG: the MP's floor, the CMG's own check and two more keep-alive hops."""
    return round(
        floor_ms(endpoint, prims, transport_ms) + CMG_HOPS * transport_ms + crypto_ms(INVENTORY[CMG_FORWARD], prims), 4
    )


def annotate(row: dict[str, Any], floor: float) -> None:
    """floor_ms, the throughput one core would reach at the floor, and two ratios to it: the measured
    throughput over the floor's (the issue's goal), and the floor over the measured CPU per request (steadier
    on a shared machine: CPU time does not count the waits for a busy core)."""
    row["floor_ms"] = round(floor, 3)
    row["floor_rps"] = round(1000 / floor, 1) if floor else 0
    row["ratio_to_floor"] = round(row["rps"] / row["floor_rps"], 3) if row["floor_rps"] else 0
    cpu = row.get("server_cpu_ms") or 0
    row["cpu_ratio_to_floor"] = round(floor / cpu, 3) if cpu else 0


def crypto_table(timings: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Every timing of each primitive (a column per moment) and the one used: the fastest."""
    used = fastest(timings)
    rows = [
        {"operation": op, "what": what, **{m: t.get(op) for m, t in timings.items()}, "used_ms": used.get(op)}
        for op, what in PRIMITIVES.items()
    ]
    when = "; ".join(f"{m}: {MOMENTS.get(m, m)}" for m in timings)
    return {
        "title": "Cryptographic primitives, timed in-process in this run with the lab's keys (CPU ms each; "
        "used_ms, the fastest timing, is what every floor holds)",
        "note": f"Each timing is the fastest of 5 batches, the primitives interleaved batch by batch ({when}; "
        "tls_handshake is section 1's). The floor is the least the host can do, so the lowest timing is used: "
        "a slower one measured a slow spell of the host, and would raise every floor that holds it.",
        "columns": ["operation", "what", *timings, "used_ms"],
        "rows": rows,
    }


def inventory_table(prims: dict[str, float], transport_ms: float) -> dict[str, Any]:
    rows = [
        {
            "endpoint": name,
            "operations": ", ".join(f"{n} × {op}" for op, n in need.ops.items()),
            "crypto_ms": round(crypto_ms(need, prims), 3),
            "floor_ms": floor_ms(name, prims, transport_ms),
            "why": need.reason,
        }
        for name, need in INVENTORY.items()
    ]
    return {
        "title": f"What each endpoint must do cryptographically (floor = {transport_ms:g} ms transport + crypto)",
        "columns": ["endpoint", "operations", "crypto_ms", "floor_ms", "why"],
        "rows": rows,
    }


def onboarding_floor(
    prims: dict[str, float], transport_ms: float, requests: dict[str, float], measured: dict[str, float]
) -> dict[str, Any]:
    """The itemised floor of one onboarding per service beside the measured CPU per onboarding. `requests`:
    service -> requests it answered per onboarding, `measured`: service -> CPU ms per onboarding (both from
    section 4's largest fleet)."""
    rows: list[dict[str, Any]] = []
    for service, items in ONBOARDING.items():
        counts: dict[str, int] = {}
        for _, entry, n in items:
            for op, k in INVENTORY[entry].ops.items():
                counts[op] = counts.get(op, 0) + k * n
        handshakes = ONBOARDING_HANDSHAKES.get(service, 0)
        asked = requests.get(service, 0.0)
        floor: float | None = (
            asked * transport_ms + crypto_ms(Need(counts, ""), prims) + handshakes * prims["tls_handshake"]
        )
        if service in NOT_ITEMISED:
            floor = None
        got = measured.get(service)
        rows.append(
            {
                "service": service,
                "requests": round(asked, 1),
                "signatures": counts.get("rsa_sign", 0) + counts.get("jwt_encode", 0),
                "verifications": counts.get("rsa_verify", 0) + counts.get("jwt_decode", 0),
                "pbkdf2": counts.get("pbkdf2", 0),
                "handshakes": handshakes,
                "floor_ms": None if floor is None else round(floor, 2),
                "measured_cpu_ms": got,
                "ratio": round(floor / got, 3) if got and floor is not None else None,
                "items": NOT_ITEMISED.get(service)
                or "; ".join(f"{n} × {step}" for step, _, n in items)
                or "transport only",
            }
        )
    total: dict[str, Any] = {
        "service": "total",
        "floor_ms": round(sum(r["floor_ms"] or 0 for r in rows), 2),
        "measured_cpu_ms": round(sum(r["measured_cpu_ms"] or 0 for r in rows), 2) or None,
    }
    total["ratio"] = round(total["floor_ms"] / total["measured_cpu_ms"], 3) if total["measured_cpu_ms"] else None
    rows.append(total)
    return {
        "title": "One onboarding: the itemised floor per service (requests × transport, signatures, "
        "verifications, handshakes) beside the measured service CPU per onboarding (section 4's "
        "largest fleet); ratio = floor / measured",
        "columns": [
            "service",
            "requests",
            "signatures",
            "verifications",
            "pbkdf2",
            "handshakes",
            "floor_ms",
            "measured_cpu_ms",
            "ratio",
            "items",
        ],
        "rows": rows,
    }
