"""TLS for the services under uvicorn.

- `TLSScope*Protocol`: stock uvicorn does not hand the peer certificate to the app; these protocol
  subclasses put it into `scope["extensions"]["tls"]["client_cert_chain"]` (ASGI TLS extension shape,
  docs/protocol-notes.md, mTLS §1). The handshake is complete when `connection_made` runs. The WebSocket
  one covers upgraded connections (the CMG connector channel).
- `server_context`: client certificate none/optional/required, CRL checking of the leaf, and the
  CRL files re-read when they change (checked at each handshake, a stat call), so a revoke is seen
  by the next connection without a restart; a resumed session's certificate is checked against them
  and for expiry too (OpenSSL verifies nothing on resumption).
- The same protocol classes give every connection (plain or TLS) a `runtime.connection.ConnectionState`
  in `scope["extensions"]`, closed when the connection is lost (IIS's connection-based Windows auth).
- `LoggingSSLObject`: asyncio logs nothing about a refused handshake; this says why.
- `AdmitAtHandshake`: for a listener that admits only some of the certificates its TLS accepts (the CMG's
  connector): the peer is decided as its handshake completes, before the HTTP protocol holds the connection.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn

import h11
import httptools
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from cmglab.runtime.connection import CONNECTION_EXTENSION, ConnectionState
from cmglab.runtime.idle import LeanFlowControl, Pipeline

log = logging.getLogger("cmglab.tls")

ClientCertMode = Literal["none", "optional", "required"]
# whether a peer may keep its connection, from its client certificate (DER; None: it sent none) and its address;
# the callable logs why not
Admit = Callable[[bytes | None, str], bool]
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# Values every connection of a process repeats (its cipher, its listener's address), one shared copy each: an idle
# keep-alive connection otherwise keeps its own (issue 20). Bounded: a process sees a handful of distinct ones.
_SHARED_MAX = 256
_shared: dict[Any, Any] = {}


def _one_copy(value: Any) -> Any:
    """VALUE (hashable, immutable), or an equal one already seen: the one copy kept."""
    if value is None or (len(_shared) >= _SHARED_MAX and value not in _shared):
        return value
    return _shared.setdefault(value, value)


class PeerCertificate(Mapping[str, Any]):
    """`getpeercert()`'s dictionary, decoded from the connection's certificate when first read. uvloop asks every
    server-side connection for it at the end of its handshake and keeps it in the transport's extra info: ~2 KB
    and 31 objects per idle keep-alive connection that nothing here reads (issue 20). The certificate it decodes
    is the one OpenSSL verified at the handshake (renegotiation is off: `server_context`)."""

    __slots__ = ("_decoded", "_sslobj")

    def __init__(self, sslobj: ssl.SSLObject) -> None:
        self._sslobj = sslobj
        self._decoded: dict[str, Any] | None = None

    def _cert(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = dict(ssl.SSLObject.getpeercert(self._sslobj) or {})
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        return self._cert()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cert())

    def __len__(self) -> int:
        return len(self._cert())

    def __repr__(self) -> str:
        return repr(self._cert())


class LoggingSSLObject(ssl.SSLObject):
    def cipher(self) -> tuple[str, str, int] | None:
        """As ssl.SSLObject's, one shared tuple per distinct value: uvloop asks every connection at the end of its
        handshake and keeps the answer in the transport's extra info (~0.2 KB per idle connection, issue 20)."""
        return _one_copy(super().cipher())

    def getpeercert(self, binary_form: bool = False) -> Any:
        """As ssl.SSLObject's (None without a peer certificate), the dictionary form decoded when read."""
        if binary_form or self.context.verify_mode == ssl.CERT_NONE or super().getpeercert(True) is None:
            return super().getpeercert(binary_form)
        return PeerCertificate(self)

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLCertVerificationError as e:
            log.warning(
                "TLS handshake refused: client certificate failed verification: %s (code %s)",
                e.verify_message,
                e.verify_code,
            )
            raise
        except ssl.SSLError as e:
            log.warning("TLS handshake failed: %s", e.reason or e)
            raise
        if self.session_reused:
            self._check_resumed()

    def _check_resumed(self) -> None:
        """A resumed session (TLS 1.2 session ID or ticket, TLS 1.3 ticket) keeps the certificate of its first
        handshake, and OpenSSL verifies nothing of it again: an expired or revoked certificate would be served for
        the session's lifetime, and the services take a certificate's validity from this layer. Checked here as a
        full handshake would: its validity period now (review 7) and the CRLs as they are now (review 6). A
        resumed session has no chain: the issuing CA's own validity was checked at the first handshake."""
        der = super().getpeercert(True)
        if der is None or self.context.verify_mode == ssl.CERT_NONE:
            return
        cert = x509.load_der_x509_certificate(der)
        if cert.not_valid_after_utc < datetime.now(UTC):
            self._refuse_resumed(cert, "certificate has expired (code 10)")
        watch = self.context.sni_callback
        if isinstance(watch, _CRLWatch) and watch.revoked(cert):
            self._refuse_resumed(cert, "certificate revoked (code 23)")

    @staticmethod
    def _refuse_resumed(cert: x509.Certificate, why: str) -> NoReturn:
        log.warning(
            "TLS handshake refused: client certificate failed verification: %s: a resumed session of %s (serial %x)",
            why,
            cert.subject.rfc4514_string(),
            cert.serial_number,
        )
        raise ssl.SSLError(f"a resumed session's client certificate failed verification: {why}")


class _ProductLogHandler(logging.Handler):
    """Re-emits the TLS refusals into a product log (a revoked certificate shows where admins look)."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.log(record.levelno, record.getMessage())


def log_refusals_to(target: logging.Logger) -> None:
    """Also write this process's refused TLS handshakes (revoked, untrusted, no certificate) into `target`,
    e.g. the CMG's CMGService.log or the MP's ClientAuth.log, which `cmglab logs` follows."""
    if not any(isinstance(h, _ProductLogHandler) and h.target is target for h in log.handlers):
        log.addHandler(_ProductLogHandler(target))


class _CRLWatch:
    """Loads the CRL files into the context again whenever one of them changes on disk, and keeps what they
    revoke (issuer, serial) for the resumed sessions, which OpenSSL does not check (`LoggingSSLObject`)."""

    def __init__(self, ctx: ssl.SSLContext, files: Sequence[Path]) -> None:
        self.ctx, self.files = ctx, list(files)
        self.stamps: dict[Path, float] = {}
        self._revoked: dict[Path, frozenset[tuple[bytes, int]]] = {}
        self.refresh()

    def refresh(self) -> None:
        for f in self.files:
            try:
                stamp = f.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self.stamps.get(f) != stamp:
                revoked = _revoked_in(f.read_bytes())  # ValueError: half-written, read again next time
                self.ctx.load_verify_locations(cafile=str(f))
                self._revoked[f], self.stamps[f] = revoked, stamp

    def revoked(self, cert: x509.Certificate) -> bool:
        """Whether CERT is revoked by the CRLs as they are now."""
        try:
            self.refresh()
        except (OSError, ssl.SSLError, ValueError) as e:
            log.warning("could not reload CRL: %s", e)
        key = (cert.issuer.public_bytes(), cert.serial_number)
        return any(key in revoked for revoked in self._revoked.values())

    def __call__(self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        try:
            self.refresh()
        except (OSError, ssl.SSLError, ValueError) as e:  # a half-written file: keep the CRL already loaded
            log.warning("could not reload CRL: %s", e)


_PEM_CRL = b"-----BEGIN X509 CRL-----"


def _revoked_in(data: bytes) -> frozenset[tuple[bytes, int]]:
    """(issuer, serial) of every certificate the CRLs in DATA (PEM, one or more; or one DER) revoke."""
    if _PEM_CRL in data:
        crls = [x509.load_pem_x509_crl(_PEM_CRL + block) for block in data.split(_PEM_CRL)[1:]]
    else:
        crls = [x509.load_der_x509_crl(data)]
    return frozenset((crl.issuer.public_bytes(), r.serial_number) for crl in crls for r in crl)


def server_context(
    *,
    certfile: Path,
    keyfile: Path,
    client_cert: ClientCertMode = "none",
    client_ca: Path | None = None,
    crl_files: Sequence[Path] = (),
    crl_check: bool = True,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    ctx.verify_mode = _VERIFY[client_cert]
    # the peer certificate a request reads (TLSExtension, read when asked) is the handshake's, verified as above
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if client_cert != "none":
        if client_ca is None:
            raise ValueError("a listener that takes client certificates needs client_ca")
        ctx.load_verify_locations(cafile=str(client_ca))
        if crl_check and crl_files:
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
            ctx.sni_callback = _CRLWatch(ctx, crl_files)
    ctx.sslobject_class = LoggingSSLObject
    return ctx


class TLSExtension(dict[str, Any]):
    """One connection's ASGI TLS extension (`client_cert_chain`, PEM, the extension's field; `client_cert_der`,
    `tls_version`, `cipher`, `session_reused`), each read from the connection's SSL object when a request first asks
    for it and kept until that request ends (`release`): an idle keep-alive connection (a CMG holds thousands) keeps
    no copy of its certificate, only the SSL object the transport holds anyway (issue 20). The certificate is the one
    OpenSSL verified at the handshake (renegotiation is off: `server_context`); on a resumed session (an abbreviated
    handshake) the session's, verified at its first handshake and checked against the CRLs at this one
    (`LoggingSSLObject`)."""

    __slots__ = ("_ssl",)
    FIELDS = frozenset({"client_cert_chain", "client_cert_der", "tls_version", "cipher", "session_reused"})

    def __init__(self, ssl_object: ssl.SSLObject) -> None:
        super().__init__()
        self._ssl = ssl_object

    def __missing__(self, key: str) -> Any:
        if key not in self.FIELDS:
            raise KeyError(key)
        tls = self._ssl
        if key == "client_cert_der":
            value: Any = tls.getpeercert(binary_form=True)
        elif key == "client_cert_chain":
            value = [ssl.DER_cert_to_PEM_cert(c) for c in self._chain_der()]
        elif key == "tls_version":
            value = tls.version()
        elif key == "session_reused":  # an abbreviated handshake: the certificate is the session's (see below)
            value = tls.session_reused
        else:
            value = (tls.cipher() or (None,))[0]
        self[key] = value
        return value

    def _chain_der(self) -> list[bytes]:
        der = self["client_cert_der"]
        if not der:
            return []
        # Python >= 3.13. A resumed session has no verified chain (OpenSSL verifies none): the session's certificate
        # alone, as it was verified at the session's first handshake and checked against the CRLs at this one
        chain = self._ssl.get_verified_chain() if hasattr(self._ssl, "get_verified_chain") else None
        return list(chain) if chain else [der]

    def __contains__(self, key: object) -> bool:
        return key in self.FIELDS or super().__contains__(key)

    def __bool__(self) -> bool:  # a TLS connection's extension, read or not yet (`if not tls` means plain HTTP)
        return True

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (dict.get skips __missing__)

    def release(self) -> None:
        """The request is over: the fields read for it go (the next request reads them again)."""
        self.clear()


def tls_extension(ssl_object: ssl.SSLObject) -> TLSExtension:
    return TLSExtension(ssl_object)


class _TLSScopeMixin:
    app: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        me: Any = self
        if getattr(me, "server", None) is not None:  # the listener's address: the same for each connection
            me.server = _one_copy(me.server)
        if isinstance(self, (H11Protocol, HttpToolsProtocol)):  # nothing holds uvicorn's yet: no request began
            me.flow = LeanFlowControl(transport)
        if isinstance(self, HttpToolsProtocol):
            me.pipeline = Pipeline()
        ssl_object = transport.get_extra_info("ssl_object")
        tls = tls_extension(ssl_object) if ssl_object is not None else None  # plain HTTP: no TLS extension
        state = self._connection_state = ConnectionState()
        inner = self.app

        async def app_with_connection(scope: Any, receive: Any, send: Any) -> None:
            extensions = scope.setdefault("extensions", {})
            extensions[CONNECTION_EXTENSION] = state
            if tls is not None:
                extensions["tls"] = tls
            try:
                await inner(scope, receive, send)
            finally:
                if tls is not None:
                    tls.release()
            self._release_request(scope)

        self.app = app_with_connection  # per connection; uvicorn reads self.app for every request

    def _release_request(self, scope: Any) -> None:
        """The reply is out: an idle keep-alive connection keeps nothing of its last request. uvicorn's protocol
        holds the request's scope (with what the framework put in it), headers and cycle until the next request
        begins (issue 20: ~4 KB per idle connection at the CMG). A pipelined next request has its own already."""
        if scope.get("type") != "http":
            return
        me: Any = self
        if getattr(me, "scope", None) is scope:
            me.scope = None
        if getattr(me, "headers", None) is scope.get("headers"):
            me.headers = None
        cycle = getattr(me, "cycle", None)
        if cycle is None or cycle.scope is not scope or not cycle.response_complete:
            return
        cycle.scope = None  # read only by the cycle's send (access log) before the reply completes
        # h11: once our side is DONE (or the next cycle IDLE), a late body's events skip the cycle and a new
        # request makes its own, so the finished cycle (its events, body buffer) goes too. httptools: its body and
        # message-complete callbacks read the current message's cycle unguarded, so the cycle goes only once llhttp
        # completed its message (more_body False: no late body can follow); the next head makes a new cycle, and
        # every other reader checks for None (issue 20: ~2 KB per idle connection)
        h11_done = isinstance(self, H11Protocol) and me.conn.our_state in (h11.DONE, h11.IDLE)
        llhttp_done = isinstance(self, HttpToolsProtocol) and me.cycle is cycle and not cycle.more_body
        if h11_done or llhttp_done:
            me.cycle = None

    def connection_lost(self, exc: Exception | None) -> None:
        state: ConnectionState | None = getattr(self, "_connection_state", None)
        if state is not None:
            state.close()
        super().connection_lost(exc)  # type: ignore[misc]


class AdmitAtHandshake:
    """First in a listener's protocol class: `admit` (the listener's) decides each peer when its TLS handshake
    completes (asyncio calls `connection_made` then, with the client certificate verified), the earliest the stack
    allows: TLS 1.3 sends the client's certificate in its last flight, and Python has no verify callback. A refused
    connection is dropped at once (no close_notify to wait for) and the HTTP protocol never sees it: it never counts
    among the listener's connections (its budget, runtime/acceptor.py) nor reads a byte of HTTP."""

    admit: Admit
    _refused = False

    def connection_made(self, transport: Any) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        peer = transport.get_extra_info("peername")
        if not self.admit(der, f"{peer[0]}:{peer[1]}" if peer else "?"):
            self._refused = True
            transport.abort()
            return
        super().connection_made(transport)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._refused:  # a refused one was never set up
            super().connection_lost(exc)  # type: ignore[misc]


class TLSScopeHttpToolsProtocol(_TLSScopeMixin, HttpToolsProtocol):
    """Its llhttp parser is made when the connection is made (for TLS: its handshake completed), not with the
    protocol. The parser holds the protocol's callbacks, a reference cycle, and the protocol is built when the
    connection is accepted: every connection whose handshake never completes (a storm of sockets that send no
    ClientHello, most dropped for newcomers) left its protocol to the cyclic collector, which freed them all at
    once long after, scattered among survivors in Python's allocator arenas: ~2 KB each never given back
    (issue 20, bench section 7). Without the cycle such a protocol goes the moment its handshake fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = None  # type: ignore[assignment]  # uvicorn's (its only reference) goes now

    def connection_made(self, transport: Any) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn sets its own
        super().connection_made(transport)


class TLSScopeH11Protocol(_TLSScopeMixin, H11Protocol):
    pass


class TLSScopeWSProtocol(_TLSScopeMixin, WebSocketsSansIOProtocol):
    """WebSocket connections: uvicorn hands an upgraded connection to a separate protocol object
    built from `config.loaded_app`, so it needs the same wrapper to see the client certificate."""
