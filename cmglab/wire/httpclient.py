"""httpx clients for the lab: lab CA trust, optional client certificate, optional CRL check, and
curl-style `HOST:PORT:ADDR` name mapping.

The mapping keeps URLs, Host headers, SNI and certificate name checks on the real name while the
socket goes to the mapped address. httpcore pools connections by the (rewritten) address and ignores
the SNI name, so each mapped name gets its own inner transport: a connection verified for one name is
never reused for another (docs/protocol-notes.md, mTLS §4).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import httpx

HostMap = dict[tuple[str, int], str]


def parse_resolve(entries: Iterable[str]) -> HostMap:
    """`HOST:PORT:ADDR` entries (curl's --resolve) into {(host, port): addr}."""
    mapping: HostMap = {}
    for raw in entries:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2]:
            raise ValueError(f"bad resolve entry {raw!r}: expected HOST:PORT:ADDR")
        host, port, addr = parts
        mapping[(host.lower(), int(port))] = addr.strip("[]")
    return mapping


def read_hosts_file(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def ssl_context(
    *,
    ca_bundle: Path | None,
    client_cert: tuple[Path, Path] | None = None,
    crl_files: Sequence[Path] = (),
    crl_check: bool = False,
) -> ssl.SSLContext:
    """A client context trusting the lab CA; with crl_check, the server certificate's CRL is checked
    (the CRL files must be loaded: a missing CRL fails the handshake, as on Windows)."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    if client_cert:
        ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    if crl_check:
        for crl in crl_files:
            ctx.load_verify_locations(cafile=str(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def _mapped_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


class HostMapTransport(httpx.BaseTransport):
    def __init__(self, hosts: HostMap, make: Callable[[], httpx.BaseTransport]) -> None:
        self.hosts, self.make = hosts, make
        self.default = make()
        self.per_name: dict[tuple[str, int], httpx.BaseTransport] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = (request.url.host.lower(), _mapped_port(request.url))
        addr = self.hosts.get(key)
        if addr is None:
            return self.default.handle_request(request)
        transport = self.per_name.get(key) or self.per_name.setdefault(key, self.make())
        return transport.handle_request(_routed(request, addr))

    def close(self) -> None:
        for t in (self.default, *self.per_name.values()):
            t.close()


class AsyncHostMapTransport(httpx.AsyncBaseTransport):
    def __init__(self, hosts: HostMap, make: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self.hosts, self.make = hosts, make
        self.default = make()
        self.per_name: dict[tuple[str, int], httpx.AsyncBaseTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = (request.url.host.lower(), _mapped_port(request.url))
        addr = self.hosts.get(key)
        if addr is None:
            return await self.default.handle_async_request(request)
        transport = self.per_name.get(key) or self.per_name.setdefault(key, self.make())
        return await transport.handle_async_request(_routed(request, addr))

    async def aclose(self) -> None:
        for t in (self.default, *self.per_name.values()):
            await t.aclose()


def _routed(request: httpx.Request, addr: str) -> httpx.Request:
    return httpx.Request(
        request.method,
        request.url.copy_with(host=addr),
        headers=request.headers,  # Host: keeps the real name
        stream=request.stream,
        extensions={**request.extensions, "sni_hostname": request.url.host},
    )


def client(
    *, ctx: ssl.SSLContext, resolve: Iterable[str] = (), timeout: float = 30.0, **kwargs: object
) -> httpx.Client:
    hosts = parse_resolve(resolve)
    return httpx.Client(
        transport=HostMapTransport(hosts, lambda: httpx.HTTPTransport(verify=ctx)),
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


def async_client(
    *,
    ctx: ssl.SSLContext,
    resolve: Iterable[str] = (),
    timeout: float = 30.0,
    limits: httpx.Limits | None = None,
    **kwargs: object,
) -> httpx.AsyncClient:
    hosts = parse_resolve(resolve)
    lim = limits or httpx.Limits(max_connections=200, max_keepalive_connections=50)
    return httpx.AsyncClient(
        transport=AsyncHostMapTransport(hosts, lambda: httpx.AsyncHTTPTransport(verify=ctx, limits=lim)),
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )
