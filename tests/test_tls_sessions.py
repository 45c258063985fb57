"""The client's TLS session cache (cmglab/wire/tls_sessions.py, as Windows' Schannel keeps one) on the agent's
transport against the services' own TLS listeners (runtime/tls.py on uvloop, CRL checked): a second connection
resumes and the listener sees the session's certificate; a session is never offered with another client
certificate, to another name or on another trust; a connection that failed verification (OpenSSL's or the agent's
own check) leaves nothing kept; a resumed session of a revoked certificate is refused and then forgotten; entries
expire and the cache is bounded. What the listener saw is its own record: the TLS extension's `session_reused`."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from cmglab.runtime.certinfo import client_cert, thumbprint
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.wire import httpclient
from cmglab.wire.h1transport import H1Transport
from cmglab.wire.tls_sessions import CLIENT_CACHE_TIME, SessionCache
from tests.support.lab import new_lab, reserve_ports
from tests.support.threaded import ThreadedService

NAME = "cmg.lab.test"  # the listener's certificate (the lab's CMG server certificate) names it
OTHER = "not-the-cmg.lab.test"  # mapped to the same listener; its certificate does not name it
VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def whoami_app() -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, Any]:
        tls = request.scope["extensions"]["tls"]
        cert = client_cert(request)
        # a resumed session has no verified chain (Python 3.13's get_verified_chain): the session's certificate
        chain = tls["client_cert_chain"]
        if cert and chain[0] != ssl.DER_cert_to_PEM_cert(tls["client_cert_der"]):
            raise ValueError("the chain does not start with the client certificate")
        return {"resumed": tls["session_reused"], "thumbprint": thumbprint(cert) if cert else None}

    return app


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("sessions") / "lab")


@pytest.fixture(scope="module")
def port(lab: Lab) -> Iterator[int]:
    """A listener as the CMG's client one: client certificate optional, CRL checked, on uvloop."""
    ident = lab.pki.server("cmg")
    (listen,) = reserve_ports(1)
    tls = TLS(
        ident.cert_path,
        ident.key_path,
        client_cert="optional",
        client_ca=lab.pki.ca_bundle,
        crl_files=[lab.pki.crl_bundle],
    )
    with ThreadedService(Service("sessions-test", [Listener("optional", whoami_app(), listen, tls=tls)]), uvloop=True):
        yield listen


def context(lab: Lab, cert: tuple[Path, Path] | None, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert)
    ctx.maximum_version = version
    return ctx


def whoami(
    ctx: ssl.SSLContext, port: int, sessions: SessionCache, credential: str | None = None, name: str = NAME
) -> dict[str, Any]:
    """GET /whoami on a new connection (a transport of its own, as each agent client has) sharing SESSIONS."""
    transport = H1Transport(ctx, {(name, port): "127.0.0.1"}, sessions=sessions, credential=credential)
    with httpx.Client(transport=transport, timeout=10) as c:
        reply = c.get(f"https://{name}:{port}/whoami")
        reply.raise_for_status()
        return dict(reply.json())


def issued(lab: Lab, name: str) -> tuple[tuple[Path, Path], str]:
    ident = lab.pki.issue_client(name)
    return (ident.cert_path, ident.key_path), thumbprint(ident.cert())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_second_connection_resumes_and_the_listener_sees_the_sessions_certificate(
    lab: Lab, port: int, version: ssl.TLSVersion
) -> None:
    cert, tp = issued(lab, f"resumes-{version.name}")
    ctx, sessions = context(lab, cert, version), SessionCache()
    first = whoami(ctx, port, sessions, tp)
    assert first == {"resumed": False, "thumbprint": tp}
    assert SessionCache.key(NAME, port, tp) in sessions
    second = whoami(ctx, port, sessions, tp)
    assert second == {"resumed": True, "thumbprint": tp}  # the identity comes from the session
    # without a client certificate too (the CMG's ServerAuth clients, Entra's)
    anonymous, kept = context(lab, None, version), SessionCache()
    assert whoami(anonymous, port, kept) == {"resumed": False, "thumbprint": None}
    assert whoami(anonymous, port, kept) == {"resumed": True, "thumbprint": None}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_is_never_offered_with_another_client_certificate(
    lab: Lab, port: int, version: ssl.TLSVersion
) -> None:
    """Attack: a session made with one device's certificate offered on another credential's connection would make
    the listener see the first certificate (the session's) for the second client."""
    (cert_a, tp_a), (cert_b, tp_b) = issued(lab, f"first-{version.name}"), issued(lab, f"second-{version.name}")
    sessions, ctx_a = SessionCache(), context(lab, cert_a, version)
    assert whoami(ctx_a, port, sessions, tp_a)["thumbprint"] == tp_a
    assert sessions.offer(ctx_a, SessionCache.key(NAME, port, tp_b)) is None  # keyed on the credential
    seen = whoami(context(lab, cert_b, version), port, sessions, tp_b)
    assert seen == {"resumed": False, "thumbprint": tp_b}
    assert whoami(ctx_a, port, sessions, tp_a) == {"resumed": True, "thumbprint": tp_a}  # its own still resumes
    # nor without any certificate: the anonymous credential is a credential of its own
    assert whoami(context(lab, None, version), port, sessions) == {"resumed": False, "thumbprint": None}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_is_never_offered_to_another_name(lab: Lab, port: int, version: ssl.TLSVersion) -> None:
    """Attack: a resumed handshake checks no certificate, so a session verified for one name offered to another
    would connect to a name no certificate was verified for. The other name gets a full handshake, which fails
    the name check, and nothing is kept for it."""
    ctx, sessions = context(lab, None, version), SessionCache()
    whoami(ctx, port, sessions)
    with pytest.raises(httpx.ConnectError) as refused:
        whoami(ctx, port, sessions, name=OTHER)
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    assert SessionCache.key(OTHER, port, None) not in sessions and len(sessions) == 1


def test_a_session_is_never_offered_on_another_trust(lab: Lab, port: int) -> None:
    """A context built on another Root store (another SSLContext) makes a full handshake, verified by its trust."""
    sessions = SessionCache()
    whoami(context(lab, None, ssl.TLSVersion.TLSv1_3), port, sessions)
    assert whoami(context(lab, None, ssl.TLSVersion.TLSv1_3), port, sessions)["resumed"] is False


def test_a_connection_that_failed_verification_keeps_nothing(lab: Lab, port: int) -> None:
    sessions = SessionCache()
    untrusted = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no lab root: OpenSSL's verification fails
    with pytest.raises(httpx.ConnectError):
        whoami(untrusted, port, sessions)
    assert len(sessions) == 0
    # verified by OpenSSL, refused by the caller's own check (the agent's revocation check, at the trace hook)

    def refuse(event: str, info: dict[str, Any]) -> None:
        if event == "connection.start_tls.complete":
            raise httpx.ConnectError("the server's certificate is revoked")

    ctx = context(lab, None, ssl.TLSVersion.TLSv1_3)
    transport = H1Transport(ctx, {(NAME, port): "127.0.0.1"}, sessions=sessions)
    with httpx.Client(transport=transport) as c, pytest.raises(httpx.ConnectError):
        c.get(f"https://{NAME}:{port}/whoami", extensions={"trace": refuse})
    assert len(sessions) == 0
    # a context that verifies nothing never keeps a session (nothing was authenticated)
    blind = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    blind.check_hostname, blind.verify_mode = False, ssl.CERT_NONE
    whoami(blind, port, sessions)
    assert len(sessions) == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_a_revoked_certificates_session_is_refused_then_forgotten(lab: Lab, port: int, version: ssl.TLSVersion) -> None:
    name = f"revoked-while-cached-{version.name}"
    cert, tp = issued(lab, name)
    ctx, sessions = context(lab, cert, version), SessionCache()
    whoami(ctx, port, sessions, tp)
    key = SessionCache.key(NAME, port, tp)
    assert key in sessions
    lab.pki.revoke(name)
    with pytest.raises(httpx.TransportError):
        whoami(ctx, port, sessions, tp)  # the listener checks the resumed session's certificate (runtime/tls.py)
    assert key not in sessions  # the next connection makes a full handshake (refused there too, by OpenSSL)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_and_the_cache_is_bounded(lab: Lab, port: int) -> None:
    """An entry lives Schannel's ClientCacheTime (10 h) from its full handshake, not OpenSSL's client default of
    2 h (`SSLSession.timeout`, which says nothing of the server's lifetime); the least recently used entry goes
    first past the bound."""
    assert CLIENT_CACHE_TIME == 10 * 3600  # Schannel's default
    clock = _Clock()
    key = SessionCache.key(NAME, port, None)
    for version in VERSIONS:
        ctx, sessions = context(lab, None, version), SessionCache(clock=clock)
        whoami(ctx, port, sessions)
        clock.now += 7200 + 1  # past OpenSSL's client default: still Schannel's
        assert sessions.offer(ctx, key) is not None
        clock.now += CLIENT_CACHE_TIME - 7200 - 2
        assert sessions.offer(ctx, key) is not None
        clock.now += 2
        assert sessions.offer(ctx, key) is None and key not in sessions  # 10 h after the full handshake
        shorter = SessionCache(clock=clock, lifetime=60)
        whoami(ctx, port, shorter)
        clock.now += 61
        assert shorter.offer(ctx, key) is None
    ctx, small = context(lab, None, ssl.TLSVersion.TLSv1_3), SessionCache(max_entries=2)
    for credential in ("a", "b", "c"):
        whoami(ctx, port, small, credential)
    assert len(small) == 2 and SessionCache.key(NAME, port, "a") not in small


@pytest.mark.parametrize("version", VERSIONS)
def test_resuming_never_extends_a_sessions_life_past_its_full_handshake(
    lab: Lab, port: int, version: ssl.TLSVersion
) -> None:
    """A resumed connection authenticates nothing again (TLS 1.3 issues it a new ticket all the same): keeping its
    session afresh at each resumption would let a device that reconnects often trust one full handshake's
    verification of the server (its certificate's validity, its name) forever. ClientCacheTime counts from the
    full handshake (RFC 8446 4.6.1: limit the total lifetime of the keying material)."""
    clock = _Clock()
    key = SessionCache.key(NAME, port, None)
    ctx, sessions = context(lab, None, version), SessionCache(clock=clock, lifetime=100)
    assert whoami(ctx, port, sessions)["resumed"] is False
    clock.now += 90
    assert whoami(ctx, port, sessions)["resumed"] is True
    clock.now += 11  # 101 s after the full handshake
    assert sessions.offer(ctx, key) is None
    assert whoami(ctx, port, sessions)["resumed"] is False  # a full handshake, which starts the clock again
    clock.now += 99
    assert sessions.offer(ctx, key) is not None
    # a resumed connection whose entry went meanwhile (forgotten, evicted) keeps nothing: its origin is unknown

    def forget(event: str, info: dict[str, Any]) -> None:
        if event == "connection.start_tls.complete":
            assert info["return_value"].get_extra_info("ssl_object").session_reused
            sessions.forget(key)

    transport = H1Transport(ctx, {(NAME, port): "127.0.0.1"}, sessions=sessions)
    with httpx.Client(transport=transport, timeout=10) as c:
        assert c.get(f"https://{NAME}:{port}/whoami", extensions={"trace": forget}).json()["resumed"] is True
    assert key not in sessions


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_is_never_offered_past_the_servers_certificate(lab: Lab, port: int, version: ssl.TLSVersion) -> None:
    """Resuming authenticates nothing again: a session kept 10 h from a server certificate with 50 s left would let
    a client accept the certificate after its notAfter, which a full handshake refuses. The entry ends with it."""
    clock, not_after = _Clock(), lab.pki.server("cmg").cert().not_valid_after_utc.timestamp()
    key = SessionCache.key(NAME, port, None)
    ctx = context(lab, None, version)
    sessions = SessionCache(clock=clock, wall=lambda: not_after - 50 - (clock.now - 1000.0))
    whoami(ctx, port, sessions)
    clock.now += 49
    assert sessions.offer(ctx, key) is not None
    clock.now += 2  # the certificate has expired
    assert sessions.offer(ctx, key) is None and key not in sessions
