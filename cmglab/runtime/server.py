"""Serve one lab service: several uvicorn listeners (TLS or plain) and background tasks in one process.

SIGINT/SIGTERM stop every listener gracefully and cancel the background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn

from cmglab.core.settings import Settings
from cmglab.runtime import sockets, workers
from cmglab.runtime.acceptor import Acceptor, Budget
from cmglab.runtime.anyverb import AnyMethodMixin
from cmglab.runtime.idle import Deadlines
from cmglab.runtime.limits import H11HeadLimits, HttpToolsHeadLimits, Limits, limit_body
from cmglab.runtime.tls import (
    Admit,
    AdmitAtHandshake,
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
    # "any-method" for listeners that must accept non-standard verbs (CcmMessaging's CCM_POST): llhttp
    # (httptools) refuses any method it does not know, anyverb.py feeds it a stand-in; "h11": uvicorn's h11
    http: Literal["httptools", "any-method", "h11"] = "httptools"
    # connections kept for this listener alone, outside the process's shared budget: the CMG's connector, so
    # that clients filling the internet-facing listener never lock its connection points out. Only completed
    # handshakes hold these slots (acceptor.Budget.make_room): raw sockets flooding the connector cannot fill them
    reserved: int = 0
    # a shorter idle and head timeout than the settings' (seconds): the connector's, as any lab-CA certificate (a
    # device's too) completes its TLS and would otherwise hold one of the reserved slots for the idle timeout
    head_deadline: float | None = None
    # which peers may keep a connection, decided as its TLS handshake completes (runtime/tls.py AdmitAtHandshake): the
    # connector's, which admits only connection points and the lab admin of all the certificates its TLS accepts
    admit: Admit | None = None


@dataclass
class Service:
    name: str
    listeners: list[Listener]
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class _H11Protocol(H11HeadLimits, TLSScopeH11Protocol):
    pass


class _HttpToolsProtocol(HttpToolsHeadLimits, TLSScopeHttpToolsProtocol):
    pass


class _AnyMethodProtocol(HttpToolsHeadLimits, AnyMethodMixin, TLSScopeHttpToolsProtocol):
    pass


_PROTOCOLS: dict[str, type[asyncio.Protocol]] = {
    "httptools": _HttpToolsProtocol,
    "any-method": _AnyMethodProtocol,
    "h11": _H11Protocol,
}


def limits_from(settings: Settings, listener: str = "", head_deadline: float | None = None) -> Limits:
    head_timeout, idle_timeout = settings.head_timeout, settings.idle_timeout
    if head_deadline is not None:
        head_timeout, idle_timeout = min(head_timeout, head_deadline), min(idle_timeout, head_deadline)
    return Limits(
        max_header_bytes=settings.max_header_bytes,
        max_url_bytes=settings.max_url_bytes,
        max_body_bytes=settings.max_body_bytes,
        max_body_chunks=settings.max_body_chunks,
        head_timeout=head_timeout,
        idle_timeout=idle_timeout,
        listener=listener,
        drop_idle=head_deadline is not None,
    )


FD_HEADROOM = 256  # descriptors kept for the database, logs, upstream calls and the listeners themselves


def budget_from(settings: Settings, reserved: int = 0) -> Budget:
    """The budget the process's listeners share; `reserved`: descriptors the listeners with one of their own keep."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    most = settings.max_connections if soft == resource.RLIM_INFINITY else max(soft - FD_HEADROOM - reserved, 64)
    return Budget(
        max_connections=min(settings.max_connections, most),
        max_handshakes=min(settings.max_handshakes, settings.max_connections),
        handshake_timeout=settings.tls_handshake_timeout,
    )


class _Server(uvicorn.Server):
    """A uvicorn server whose listening socket is served by an `Acceptor` (connection budget, handshake
    timeout) instead of `loop.create_server`."""

    def __init__(self, config: uvicorn.Config, budget: Budget, name: str, freeze_heap: bool = False) -> None:
        super().__init__(config)
        self.budget, self.name, self.freeze_heap = budget, name, freeze_heap

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # run_service owns the signals
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the application's startup failed
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        self.budget.established.append(self.server_state.connections)
        acceptors = [
            Acceptor(sock, create_protocol, config.ssl, self.budget, config.backlog, self.name)
            for sock in sockets or []
        ]
        for a in acceptors:
            a.start()
        self.servers = acceptors  # type: ignore[assignment]  # close() and wait_closed() are all uvicorn uses
        self.started = True
        if self.freeze_heap:
            freeze_startup_heap()


YOUNG_COLLECTION = 20_000  # net allocations of tracked objects between two young collections (Python's: 700)


def freeze_startup_heap() -> None:
    """Move what the process holds once it serves (modules, the app, its parts: some 10^5 objects) out of the
    cyclic collector's reach (`gc.freeze`): every full collection walked all of it, ~60-80 ms of CPU each in
    Entra, the acceptor's trims and the automatic ones (issue 20). What is made later is collected as before
    (the acceptor's failed handshakes among it); garbage made before is collected first. Called per listener
    as it starts (the last one freezes everything): a later call only walks what came since.

    Then the young generation is collected every YOUNG_COLLECTION net allocations instead of Python's 700 (issue
    20): at 700 the objects of the requests in flight were walked by young collections while alive, and again in
    the older generations they were promoted to (the MP under 16 connections: one young collection per ~20
    requests, ~0.1 ms each, ~7.6 us of CPU per request in all generations). At 20,000 most of them are freed by
    reference counting before any collection sees them. Only cyclic garbage waits longer (a few MB at most; the
    acceptor still collects after failed handshakes, acceptor.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION, 20, 20)


def _config(listener: Listener, access_log: bool, limits: Limits) -> uvicorn.Config:
    kwargs: dict[str, Any] = {}
    tls = listener.tls
    if tls is not None:

        def factory(_config: uvicorn.Config, _default: Callable[[], Any]) -> Any:
            return server_context(
                certfile=tls.certfile,
                keyfile=tls.keyfile,
                client_cert=tls.client_cert,
                client_ca=tls.client_ca,
                crl_files=tls.crl_files,
                crl_check=tls.crl_check,
            )

        kwargs["ssl_context_factory"] = factory
    base = _PROTOCOLS[listener.http]
    # this listener's limits, and its connections' head and idle deadlines (one timer per slot of time)
    protocol: type = type(base.__name__, (base,), {"limits": limits, "deadlines": Deadlines()})
    if listener.admit is not None:
        protocol = type(base.__name__, (AdmitAtHandshake, protocol), {"admit": staticmethod(listener.admit)})
    return uvicorn.Config(
        limit_body(listener.app, limits),
        host=listener.host,
        port=listener.port,
        http=protocol,
        # ours (limits.py) answers 431 first; h11's own limit would answer a bare 400
        h11_max_incomplete_event_size=limits.max_header_bytes + 4096,
        ws=TLSScopeWSProtocol,  # WebSocket upgrades see the client certificate too (CMG connector)
        loop="uvloop",
        lifespan="on",
        access_log=access_log,
        log_level="warning",
        # Ctrl-C stops a lab within 2 s: requests in flight (an event stream, a held channel) get 1 s
        timeout_graceful_shutdown=1,
        proxy_headers=False,
        server_header=False,
        # IIS's connection timeout (settings.idle_timeout, 120 s), not uvicorn's 5 s: a CMG holds its clients'
        # idle keep-alive connections (a real CMG VM instance: 6,000 of them), it does not make them reconnect
        timeout_keep_alive=math.ceil(limits.idle_timeout),  # ours (limits.py) closes at the exact time
        **kwargs,
    )


_inherited: dict[tuple[str, int], socket.socket] | None = None


def listening_sockets(service: Service, shared: bool = False) -> list[socket.socket]:
    """One bound socket per listener: handed over by the parent (`CMGLAB_LISTEN_FDS`), made on a port this
    process reserved, or bound here (`shared`: for several workers). Handed-over sockets this service does not
    use are closed."""
    global _inherited
    if _inherited is None:
        _inherited = sockets.inherited_sockets()
    made: list[socket.socket] = []
    try:
        for listener in service.listeners:
            where = (listener.host, listener.port)
            bind = sockets.bind_shared if shared else sockets.bind_listener
            sock = _inherited.pop(where, None) or sockets.claim(*where) or bind(*where, listener.name)
            made.append(sock)
    except BaseException:
        for s in made:
            s.close()
        raise
    for s in _inherited.values():
        s.close()
    _inherited.clear()
    return made


async def serve(
    service: Service,
    *,
    access_log: bool = False,
    stop: asyncio.Event | None = None,
    settings: Settings | None = None,
    worker_argv: Sequence[str] = (),
    freeze_heap: bool = False,
) -> None:
    """Serve SERVICE until STOP (or SIGINT/SIGTERM). With `worker_argv` (how to start this service again) and
    settings.workers > 1, that many more processes serve the same sockets (cmglab/runtime/workers.py).
    `freeze_heap`: a service process of its own (`run_service`) freezes its startup heap once it serves
    (`freeze_startup_heap`); an embedding process (tests) leaves its collector alone."""
    settings = settings or Settings()
    count = workers.effective_workers(service.name, settings.workers) if worker_argv else 1
    bound = listening_sockets(service, shared=count > 1)
    cpus = workers.worker_cpus(service.name, count) if count > 1 and settings.pin_workers else None
    children = workers.start_workers(count - 1, bound, worker_argv, cpus) if count > 1 else []
    # after the others started (they inherit this process's CPUs), before any listener or pool starts a thread
    workers.pin_to(cpus[0] if cpus else workers.handed_cpu())
    if children:
        log.info(
            "%s: %d workers on the same listeners (pids %s and this one, %d)",
            service.name,
            count,
            ", ".join(str(c.pid) for c in children),
            os.getpid(),
        )
    # one per process (descriptors are the process'), and one of its own for a listener with a reserve
    budget = budget_from(settings, reserved=sum(listener.reserved for listener in service.listeners))

    def budget_of(listener: Listener) -> Budget:
        if not listener.reserved:
            return budget
        return Budget(listener.reserved, listener.reserved, handshake_timeout=settings.tls_handshake_timeout)

    servers = [
        _Server(
            _config(listener, access_log, limits_from(settings, listener.name, listener.head_deadline)),
            budget_of(listener),
            listener.name,
            freeze_heap,
        )
        for listener in service.listeners
    ]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            loop.add_signal_handler(sig, stop.set)

    serving = [
        asyncio.create_task(s.serve(sockets=[sock]), name=f"listener:{listener.name}")
        for s, sock, listener in zip(servers, bound, service.listeners, strict=True)
    ]
    background = [asyncio.create_task(job(), name=f"background:{service.name}") for job in service.background]
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
    await asyncio.to_thread(workers.stop_workers, children)
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


def run_service(service: Service, *, access_log: bool = False, worker_argv: Sequence[str] = ()) -> None:
    """Run SERVICE in this process until SIGINT/SIGTERM; `worker_argv` (e.g. `-m cmglab serve entra --lab DIR`)
    lets it start CMGLAB_WORKERS - 1 more workers."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    workers.die_with_parent()
    raise_open_file_limit()
    import uvloop

    try:
        uvloop.run(serve(service, access_log=access_log, worker_argv=worker_argv, freeze_heap=True))
    except sockets.PortInUse as e:  # one line that says what to do, no traceback
        print(f"cmglab: {e}", file=sys.stderr, flush=True)
        raise SystemExit(PORT_IN_USE_EXIT) from None
