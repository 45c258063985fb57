"""Serve one lab service: several uvicorn listeners (TLS or plain) and background tasks in one process.

SIGINT/SIGTERM stop every listener gracefully and cancel the background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn

from cmglab.runtime import sockets
from cmglab.runtime.tls import (
    ClientCertMode,
    TLSScopeH11Protocol,
    TLSScopeHttpToolsProtocol,
    TLSScopeWSProtocol,
    server_context,
)

log = logging.getLogger("cmglab.server")

PORT_IN_USE_EXIT = sockets.PORT_IN_USE_EXIT


@dataclass
class TLS:
    certfile: Path
    keyfile: Path
    client_cert: ClientCertMode = "none"
    client_ca: Path | None = None
    crl_files: Sequence[Path] = ()
    crl_check: bool = True


@dataclass
class Listener:
    name: str
    app: Any  # an ASGI application
    port: int
    host: str = "127.0.0.1"
    tls: TLS | None = None
    # "h11" for listeners that must accept non-standard verbs (CcmMessaging's CCM_POST): llhttp
    # (httptools) refuses any method it does not know
    http: Literal["httptools", "h11"] = "httptools"


@dataclass
class Service:
    name: str
    listeners: list[Listener]
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # run_service owns the signals
        yield


def _config(listener: Listener, access_log: bool) -> uvicorn.Config:
    kwargs: dict[str, Any] = {}
    tls = listener.tls
    if tls is not None:
        def factory(_config: uvicorn.Config, _default: Callable[[], Any]) -> Any:
            return server_context(certfile=tls.certfile, keyfile=tls.keyfile,
                                  client_cert=tls.client_cert, client_ca=tls.client_ca,
                                  crl_files=tls.crl_files, crl_check=tls.crl_check)
        kwargs["ssl_context_factory"] = factory
    return uvicorn.Config(
        listener.app, host=listener.host, port=listener.port,
        http=TLSScopeH11Protocol if listener.http == "h11" else TLSScopeHttpToolsProtocol,
        ws=TLSScopeWSProtocol,  # WebSocket upgrades see the client certificate too (CMG connector)
        loop="uvloop", lifespan="on", access_log=access_log, log_level="warning",
        timeout_graceful_shutdown=5, proxy_headers=False, server_header=False,
        # IIS's connection timeout (120 s), not uvicorn's 5 s: a CMG holds its clients' idle keep-alive
        # connections (a real CMG VM instance: 6,000 of them), it does not make them reconnect
        timeout_keep_alive=120, **kwargs,
    )


_inherited: dict[tuple[str, int], socket.socket] | None = None


def listening_sockets(service: Service) -> list[socket.socket]:
    """One bound socket per listener: handed over by the parent (`CMGLAB_LISTEN_FDS`), made on a port this
    process reserved, or bound here. Handed-over sockets this service does not use are closed."""
    global _inherited
    if _inherited is None:
        _inherited = sockets.inherited_sockets()
    made: list[socket.socket] = []
    try:
        for listener in service.listeners:
            where = (listener.host, listener.port)
            sock = (_inherited.pop(where, None) or sockets.claim(*where)
                    or sockets.bind_listener(listener.host, listener.port, listener.name))
            made.append(sock)
    except BaseException:
        for s in made:
            s.close()
        raise
    for s in _inherited.values():
        s.close()
    _inherited.clear()
    return made


async def serve(service: Service, *, access_log: bool = False,
                stop: asyncio.Event | None = None) -> None:
    bound = listening_sockets(service)
    servers = [_Server(_config(listener, access_log)) for listener in service.listeners]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            loop.add_signal_handler(sig, stop.set)

    serving = [asyncio.create_task(s.serve(sockets=[sock]), name=f"listener:{listener.name}")
               for s, sock, listener in zip(servers, bound, service.listeners, strict=True)]
    background = [asyncio.create_task(job(), name=f"background:{service.name}")
                  for job in service.background]
    for listener in service.listeners:
        scheme = "https" if listener.tls else "http"
        log.info("%s listening on %s://%s:%d", listener.name, scheme, listener.host, listener.port)

    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *serving, *background], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not waiter and not t.cancelled() and t.exception()]

    for s in servers:
        s.should_exit = True
    for t in background:
        t.cancel()
    await asyncio.gather(*serving, *background, return_exceptions=True)
    for hook in service.on_stop:
        await hook()
    waiter.cancel()
    if failed:
        raise failed[0].exception()  # type: ignore[misc]
    if any(not s.started for s in servers):
        raise SystemExit(f"{service.name}: a listener could not start (its error is in the log above)")


def raise_open_file_limit() -> None:
    """A CMG instance holds thousands of client connections: lift the soft descriptor limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_service(service: Service, *, access_log: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_open_file_limit()
    import uvloop

    try:
        uvloop.run(serve(service, access_log=access_log))
    except sockets.PortInUse as e:  # one line that says what to do, no traceback
        print(f"cmglab: {e}", file=sys.stderr, flush=True)
        raise SystemExit(PORT_IN_USE_EXIT) from None
