"""The shared TLS runtime on real sockets: client certificates seen by the app, refused at the
handshake when they must be, CRL checking on and off, and the lab's name mapping."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Request

from cmglab.pki import builders as b
from cmglab.runtime import tls as runtime_tls
from cmglab.runtime.certinfo import client_cert, describe
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.runtime.tls import PeerCertificate, server_context, tls_extension
from cmglab.wire import httpclient
from tests.support.lab import new_lab, reserve_ports
from tests.support.threaded import ThreadedService


def whoami_app() -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, str] | dict[str, None]:
        cert = client_cert(request)
        return describe(cert) if cert else {"subject": None}

    return app


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("tls") / "lab")


@pytest.fixture(scope="module")
def listeners(tls_lab: Lab) -> Iterator[dict[str, int]]:
    """One listener per client-certificate mode, all serving the cmg certificate."""
    ident = tls_lab.pki.server("cmg")
    ports = dict(zip(["optional", "required", "required-nocrl", "none"], reserve_ports(4), strict=True))

    def tls(mode: str, crl: bool = True) -> TLS:
        return TLS(
            ident.cert_path,
            ident.key_path,
            client_cert=mode,  # type: ignore[arg-type]
            client_ca=tls_lab.pki.ca_bundle,
            crl_files=[tls_lab.pki.crl_bundle],
            crl_check=crl,
        )

    service = Service(
        "tls-test",
        [
            Listener("optional", whoami_app(), ports["optional"], tls=tls("optional")),
            Listener("required", whoami_app(), ports["required"], tls=tls("required")),
            Listener("required-nocrl", whoami_app(), ports["required-nocrl"], tls=tls("required", crl=False)),
            Listener("none", whoami_app(), ports["none"], tls=tls("none")),
        ],
    )
    with ThreadedService(service):
        yield ports


def client(
    lab: Lab, port: int, cert: tuple[Path, Path] | None = None, names: tuple[str, ...] = ("cmg.lab.test",)
) -> httpx.Client:
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert)
    return httpclient.client(ctx=ctx, resolve=[f"{n}:{port}:127.0.0.1" for n in names], timeout=5)


def pair(ident) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    return ident.cert_path, ident.key_path


def foreign_client_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A client certificate from a CA the lab does not know."""
    ca_key = b.new_key()
    ca = b.self_signed_ca(ca_key, b.name("Rogue CA"))
    key = b.new_key()
    cert = b.leaf(key.public_key(), b.name("rogue-client"), ca, ca_key, ekus=[b.CLIENT_AUTH], san=["rogue"])
    (tmp_path / "rogue.crt").write_bytes(b.cert_pem(cert))
    (tmp_path / "rogue.key").write_bytes(b.key_pem(key))
    return tmp_path / "rogue.crt", tmp_path / "rogue.key"


def refused(c: httpx.Client, url: str) -> bool:
    try:
        c.get(url)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
        return True
    return False


def test_good_client_certificate_is_seen_by_the_app(tls_lab: Lab, listeners: dict[str, int]) -> None:
    ident = tls_lab.pki.issue_client("good-client")
    cert = ident.cert()
    for mode in ("optional", "required"):
        with client(tls_lab, listeners[mode], pair(ident)) as c:
            reply = c.get(f"https://cmg.lab.test:{listeners[mode]}/whoami").json()
        assert reply["subject"] == cert.subject.rfc4514_string()
        assert reply["thumbprint"] == b.sha1_thumbprint(cert)


def test_optional_listener_without_certificate_reaches_the_app(tls_lab: Lab, listeners: dict[str, int]) -> None:
    with client(tls_lab, listeners["optional"]) as c:
        assert c.get(f"https://cmg.lab.test:{listeners['optional']}/whoami").json() == {"subject": None}


def test_required_listener_refuses_no_certificate(tls_lab: Lab, listeners: dict[str, int]) -> None:
    with client(tls_lab, listeners["required"]) as c:
        assert refused(c, f"https://cmg.lab.test:{listeners['required']}/whoami")


def test_foreign_ca_certificate_is_refused(tls_lab: Lab, listeners: dict[str, int], tmp_path: Path) -> None:
    rogue = foreign_client_cert(tmp_path)
    for mode in ("optional", "required"):
        with client(tls_lab, listeners[mode], rogue) as c:
            assert refused(c, f"https://cmg.lab.test:{listeners[mode]}/whoami")


def test_revoked_certificate_refused_with_crl_check_and_accepted_without(
    tls_lab: Lab, listeners: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    ident = tls_lab.pki.issue_client("soon-revoked")
    with client(tls_lab, listeners["required"], pair(ident)) as c:
        assert c.get(f"https://cmg.lab.test:{listeners['required']}/whoami").status_code == 200
    tls_lab.pki.revoke("soon-revoked")  # the running listener picks the new CRL up at the next handshake

    with caplog.at_level("WARNING", logger="cmglab.tls"), client(tls_lab, listeners["required"], pair(ident)) as c:
        assert refused(c, f"https://cmg.lab.test:{listeners['required']}/whoami")
    assert "certificate revoked" in caplog.text

    with client(tls_lab, listeners["required-nocrl"], pair(ident)) as c:
        assert c.get(f"https://cmg.lab.test:{listeners['required-nocrl']}/whoami").status_code == 200


def test_name_mapping_keeps_certificate_checks_on_the_real_name(tls_lab: Lab, listeners: dict[str, int]) -> None:
    port = listeners["none"]
    with client(tls_lab, port, names=("cmg.lab.test", "wrong.lab.test")) as c:
        reply = c.get(f"https://cmg.lab.test:{port}/whoami")
        assert reply.status_code == 200 and reply.url.host == "cmg.lab.test"
        # the pool already holds a connection verified for cmg.lab.test: it must not be reused
        with pytest.raises(httpx.ConnectError, match="Hostname mismatch"):
            c.get(f"https://wrong.lab.test:{port}/whoami")
        assert c.get(f"https://cmg.lab.test:{port}/whoami").status_code == 200


def test_resolve_entries_are_parsed_like_curl() -> None:
    assert httpclient.parse_resolve(["a.test:443:10.0.0.1", "# comment", "", "B.test:80:[::1]"]) == {
        ("a.test", 443): "10.0.0.1",
        ("b.test", 80): "::1",
    }
    with pytest.raises(ValueError, match="HOST:PORT:ADDR"):
        httpclient.parse_resolve(["nonsense"])


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> ssl.SSLObject:
    """A real TLS handshake over memory BIOs; the server's SSL object."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="cmg.lab.test")
    for _ in range(10):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            return server
    raise AssertionError("handshake did not complete")


def test_an_idle_connection_keeps_no_copy_of_its_certificate(tls_lab: Lab) -> None:
    """Issue 20: the TLS extension and the peer certificate's dictionary (uvloop keeps it per connection) are read
    from the SSL object when asked; what a request read goes when it ends. The values are the handshake's."""
    ident = tls_lab.pki.server("cmg")
    server_ctx = server_context(
        certfile=ident.cert_path,
        keyfile=ident.key_path,
        client_cert="optional",
        client_ca=tls_lab.pki.ca_bundle,
        crl_files=[tls_lab.pki.crl_bundle],
    )
    assert server_ctx.options & ssl.OP_NO_RENEGOTIATION
    device = tls_lab.pki.issue_client("idle-client")
    der = device.cert().public_bytes(serialization.Encoding.DER)
    client_ctx = httpclient.ssl_context(ca_bundle=tls_lab.pki.ca_bundle, client_cert=pair(device))
    server = _handshake(server_ctx, client_ctx)

    peercert = server.getpeercert()
    assert isinstance(peercert, PeerCertificate) and peercert == ssl.SSLObject.getpeercert(server)
    assert dict(peercert["subject"][-1])["commonName"] == "idle-client"
    ext = tls_extension(server)
    assert len(ext) == 0 and "client_cert_der" in ext and "client_cert_chain" in ext  # nothing kept until read
    assert ext  # present (`if not tls` tells plain HTTP) though nothing is read yet
    assert ext["client_cert_der"] == der and ext.get("client_cert_der") is ext["client_cert_der"]  # once a request
    # the verified chain from Python 3.13 on (leaf, issuing CA, root), the certificate alone before it
    verified = server.get_verified_chain() if hasattr(server, "get_verified_chain") else [der]
    assert ext["client_cert_chain"] == [ssl.DER_cert_to_PEM_cert(c) for c in verified]
    assert ext["client_cert_chain"][0] == ssl.DER_cert_to_PEM_cert(der)
    assert ext["tls_version"] == server.version() and ext["cipher"] == server.cipher()[0]
    assert ext.get("missing") is None and "missing" not in ext
    with pytest.raises(KeyError):
        ext["missing"]
    ext.release()
    assert len(ext) == 0 and ext["client_cert_der"] == der

    anonymous = _handshake(server_ctx, httpclient.ssl_context(ca_bundle=tls_lab.pki.ca_bundle))
    assert anonymous.getpeercert() is None and anonymous.getpeercert(True) is None
    ext = tls_extension(anonymous)
    assert ext.get("client_cert_der") is None and ext["client_cert_chain"] == []


def test_connections_share_their_cipher_and_listener_address(tls_lab: Lab) -> None:
    """Issue 20: what every connection repeats (the cipher uvloop keeps per connection, the listener's address in
    uvicorn's protocol and each request's scope) is one shared object, not a copy per idle connection; the values
    are unchanged."""
    ident = tls_lab.pki.server("cmg")
    seen: list[tuple[Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append((scope["server"], scope["extensions"]["tls"]["cipher"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    (port,) = reserve_ports(1)
    service = Service("share-test", [Listener("share", app, port, tls=TLS(ident.cert_path, ident.key_path))])
    with ThreadedService(service):
        for _ in range(2):  # two connections of their own
            with client(tls_lab, port) as c:
                assert c.get(f"https://cmg.lab.test:{port}/").status_code == 200
    (server_a, cipher_a), (server_b, cipher_b) = seen
    assert server_a == ("127.0.0.1", port) and server_a is server_b
    assert cipher_a == cipher_b

    server_ctx = server_context(certfile=ident.cert_path, keyfile=ident.key_path)
    client_ctx = httpclient.ssl_context(ca_bundle=tls_lab.pki.ca_bundle)
    one, two = _handshake(server_ctx, client_ctx), _handshake(server_ctx, client_ctx)
    assert one.cipher() == ssl.SSLObject.cipher(one) and one.cipher() is two.cipher()


def _resumable_whoami(
    ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None = None
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """GET /whoami on a connection of its own, offering SESSION for resumption: the reply's status line (b"" when
    the connection was refused or dropped), the session to offer next time, and whether this one resumed."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="cmg.lab.test", session=session) as s,
        ):
            s.sendall(b"GET /whoami HTTP/1.1\r\nHost: cmg.lab.test\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            return reply.split(b"\r\n", 1)[0], s.session, bool(s.session_reused)
    except (ssl.SSLError, OSError):
        return b"", None, False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_resumed_session_of_a_revoked_certificate_is_refused(
    tls_lab: Lab, listeners: dict[str, int], version: ssl.TLSVersion, caplog: pytest.LogCaptureFixture
) -> None:
    """Review 6, attack: keep a TLS session, have the certificate revoked, resume the session. A resumed session
    keeps its first handshake's certificate and OpenSSL checks no CRL on resumption: the revoked certificate went
    on being served (TLS 1.2 session ID or ticket, TLS 1.3 ticket) for the session's lifetime. Now a resumed
    handshake's certificate is checked against the CRL as it is now and refused (logged as a full handshake's
    refusal is); a resumed session of a certificate not revoked is served as before."""
    name = f"resumes-after-revoke-{version.name}"
    ctx = httpclient.ssl_context(ca_bundle=tls_lab.pki.ca_bundle, client_cert=pair(tls_lab.pki.issue_client(name)))
    ctx.maximum_version = version
    port = listeners["required"]
    status, session, _ = _resumable_whoami(ctx, port)
    assert b" 200 " in status
    if version is ssl.TLSVersion.TLSv1_2:  # the attack is real here: a valid certificate's session does resume
        status, session, resumed = _resumable_whoami(ctx, port, session)
        assert b" 200 " in status and resumed
    tls_lab.pki.revoke(name)
    with caplog.at_level(logging.WARNING, logger="cmglab.tls"):
        status, _, resumed = _resumable_whoami(ctx, port, session)
    assert b" 200 " not in status, f"the revoked certificate's session was served (resumed: {resumed})"
    # a resumption was offered (TLS 1.3: only with a ticket; a listener may issue none): its refusal is logged
    if session is not None and (version is ssl.TLSVersion.TLSv1_2 or session.has_ticket):
        assert any(f"a resumed session of CN={name}" in r.getMessage() for r in caplog.records), caplog.text


def _clock_at(moment: datetime) -> type[datetime]:
    """`datetime` whose now() is MOMENT (for a module's `datetime` name)."""

    class At(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> At:
            return cls.fromtimestamp(moment.timestamp(), tz)

    return At


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("mode", ["required", "required-nocrl"])
def test_a_resumed_session_of_an_expired_certificate_is_refused(
    tls_lab: Lab,
    listeners: dict[str, int],
    version: ssl.TLSVersion,
    mode: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 7, attack: a client certificate about to expire makes a full handshake, then resumes its session
    after the certificate's NotAfter. OpenSSL verifies nothing on resumption, and the CMG and the MP take the
    certificate's validity from the TLS layer: the expired certificate went on being served for the session's
    lifetime (the server's 2 h), whatever the CRL setting. Now a resumed session's certificate is refused once it
    has expired, logged as a full handshake's refusal is."""
    name = f"expires-while-resumed-{version.name}-{mode}"
    ident = tls_lab.pki.issue_client(name, days=1)
    ctx = httpclient.ssl_context(ca_bundle=tls_lab.pki.ca_bundle, client_cert=pair(ident))
    ctx.maximum_version = version
    port = listeners[mode]
    status, session, _ = _resumable_whoami(ctx, port)
    assert b" 200 " in status
    # the listener's clock a second past the certificate's NotAfter (it runs in this process): no wait on the real one
    expired = ident.cert().not_valid_after_utc + timedelta(seconds=1)
    monkeypatch.setattr(runtime_tls, "datetime", _clock_at(expired))
    assert session is not None and (version is ssl.TLSVersion.TLSv1_2 or session.has_ticket)
    with caplog.at_level(logging.WARNING, logger="cmglab.tls"):
        status, _, resumed = _resumable_whoami(ctx, port, session)
    assert b" 200 " not in status, f"the expired certificate's session was served (resumed: {resumed})"
    assert any(
        f"certificate has expired (code 10): a resumed session of CN={name}" in r.getMessage() for r in caplog.records
    ), caplog.text
