"""Helpers for the attack tests of issue 15: raw bytes over TLS (what a client library refuses to send),
the lab's request records, polling with a deadline."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from cmglab.runtime.lab import Lab
from cmglab.wire import httpclient

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 20, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def client(lab: Lab, *, cert: Any = None, timeout: float = 15) -> httpx.Client:
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert)
    return httpclient.client(ctx=ctx, resolve=lab.resolve(), timeout=timeout)


def admin(lab: Lab) -> dict[str, str]:
    return {"Authorization": f"Bearer {lab.admin_token()}"}


def raw_https(
    lab: Lab, service: str, data: bytes, *, timeout: float = 15, cert: Any = None, must_close: bool = False
) -> bytes:
    """Send `data` as is over TLS to a service (SNI and certificate check on its lab name; `cert`: the client
    certificate, as (cert_path, key_path)); read until the server closes or `timeout` passes. `must_close`: the
    server has to close the connection within `timeout` (an AssertionError otherwise)."""
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert)
    out = bytearray()
    closed = False
    with (
        socket.create_connection(("127.0.0.1", lab.port(service)), timeout=timeout) as sock,
        ctx.wrap_socket(sock, server_hostname=lab.host(service)) as tls,
    ):
        tls.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = tls.recv(65536)
            except TimeoutError:
                break
            except (ssl.SSLError, ConnectionError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            out.extend(chunk)
    if must_close and not closed:
        raise AssertionError(f"{service} did not close the connection within {timeout:g} s; got {bytes(out[:200])!r}")
    return bytes(out)


def status_of(reply: bytes) -> int:
    """The status code of the first response in `reply` (0: none)."""
    line = reply.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit() else 0


def last_seq(lab: Lab, service: str) -> int:
    with client(lab) as c:
        return int(
            c.get(f"{lab.url(service)}/_lab/requests", params={"limit": 0}, headers=admin(lab)).json()["last_seq"]
        )


def records_after(lab: Lab, service: str, seq: int) -> list[dict[str, Any]]:
    with client(lab) as c:
        reply = c.get(f"{lab.url(service)}/_lab/requests", params={"after": seq, "limit": 10000}, headers=admin(lab))
        return list(reply.json()["requests"])
