"""The CMG channel, routing, URL filter, rewrite, limits and logs, with real sockets and TLS:
client -> CMG (subprocess) -> channel -> connection point (subprocess) -> a test-only upstream
that stands where the MP would be (same name, port and certificate, in a lab of its own) and echoes
what it got. The MP itself is exercised in test_cmg_flows.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography import x509
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cmglab.runtime.admin import install_lab_admin
from cmglab.runtime.certinfo import client_cert
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.services.distribution_point.app import AnyMethod
from cmglab.tools.processes import LabProcesses
from tests.support.cmg import FAST_ENV, bearer, channel_up, cmg_points, cp_health, log_text, proxy_url, wait_for
from tests.support.lab import lab_client, new_lab
from tests.support.sec_attacks import raw_https
from tests.support.threaded import ThreadedService

PATHS = ["CCM_STS", "ccm_system/request", "ccm_system_tokenauth/request", "echo", "slow", "big", "drip"]


@dataclass
class Upstream:
    """A stand-in for the MP on the MP's name, port and certificate: mutual TLS, echo routes."""

    lab: Lab
    seen: list[dict[str, Any]] = field(default_factory=list)
    threaded: ThreadedService | None = None

    def config(self) -> dict[str, Any]:
        site = self.lab.config.site
        tenant = self.lab.config.primary_tenant
        return {
            "site_code": site.code,
            "allow_cmg": True,
            "endpoints": {str(site.role_id): {"internal_url": self.lab.url("management-point"), "paths": PATHS}},
            "tenants": [
                {
                    "tenant_id": tenant.tenant_id,
                    "client_app_id": "0b7c8ab3-9ea1-4ffa-b2b9-8ffdd944bd8b",
                    "resource_uri": "https://ConfigMgrService",
                    "authority": f"https://login.microsoftonline.com/{tenant.tenant_id}",
                }
            ],
            "content": {"package_id": site.client_package_id, "version": 1},
        }

    def app(self) -> FastAPI:
        app = FastAPI()
        install_lab_admin(app, service="upstream", lab=self.lab)

        @app.get("/CCM_Cloud/config")
        def cloud_config() -> dict[str, Any]:
            return self.config()

        async def echo(request: Request) -> Response:
            body = await request.body()
            cert = client_cert(request)
            self.seen.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "query": request.url.query,
                    "headers": dict(request.headers),
                    "body": body,
                    "tls_subject": cert.subject.rfc4514_string() if cert else None,
                }
            )
            return Response(
                body,
                media_type="application/octet-stream",
                headers={"X-Body-SHA256": hashlib.sha256(body).hexdigest(), "Set-Cookie": "a=1"},
            )

        async def slow(request: Request) -> Response:
            await asyncio.sleep(float(request.query_params.get("s", "10")))
            return Response(b"finally")

        async def big(request: Request) -> Response:
            size = int(request.query_params.get("n", "1000000"))
            return Response(_pattern(size), media_type="application/octet-stream")

        async def drip(request: Request) -> Response:
            async def gen() -> AsyncIterator[bytes]:
                for _ in range(int(request.query_params.get("n", "10"))):
                    yield b"x" * 1000
                    await asyncio.sleep(float(request.query_params.get("every", "0.2")))

            return StreamingResponse(gen())

        routes = {
            "/echo": echo,
            "/ccm_sts": echo,
            "/ccm_system/request": echo,
            "/ccm_system_tokenauth/request": echo,
            "/slow": slow,
            "/big": big,
            "/drip": drip,
        }

        async def dispatch(request: Request) -> Response:  # case-insensitive, like IIS
            handler = routes.get(request.url.path.lower())
            if handler is None:
                return JSONResponse({"unexpected": request.url.path}, 418)
            return await handler(request)

        app.router.routes.append(Route("/{rest:path}", AnyMethod(dispatch)))  # any method, CCM_POST too
        return app

    def start(self) -> None:
        ident = self.lab.pki.server("management-point")
        tls = TLS(ident.cert_path, ident.key_path, client_cert="required", client_ca=self.lab.pki.ca_bundle)
        service = Service(
            "upstream", [Listener("upstream", self.app(), self.lab.port("management-point"), tls=tls, http="h11")]
        )
        self.threaded = ThreadedService(service).__enter__()

    def stop(self) -> None:
        if self.threaded is not None:
            self.threaded.__exit__(None, None, None)
            self.threaded = None


def _pattern(size: int) -> bytes:
    return (hashlib.sha256(b"cmglab").digest() * (size // 32 + 1))[:size]


# not lab_fixture: a lab of its own, the CMG and connection point with short intervals (FAST_ENV) in front of
# a stand-in upstream
@pytest.fixture(scope="module")
def chan_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("cmgchan") / "lab")


@pytest.fixture(scope="module")
def upstream(chan_lab: Lab) -> Iterator[Upstream]:
    up = Upstream(chan_lab)
    up.start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def procs(chan_lab: Lab, upstream: Upstream) -> Iterator[LabProcesses]:
    with LabProcesses(chan_lab, env=dict(FAST_ENV)) as p:  # stopped on every way out, a failed start included
        p.ensure("cmg", "cmg-connection-point")
        wait_for(lambda: channel_up(chan_lab) and cmg_points(chan_lab), what="channel up")
        with lab_client(chan_lab) as c:
            wait_for(lambda: c.get(f"{chan_lab.url('cmg')}/_lab/health").json()["site_config"], what="site config")
        yield p


@pytest.fixture
def client(chan_lab: Lab, procs: LabProcesses) -> Iterator[httpx.Client]:
    with lab_client(chan_lab) as c:
        yield c


def test_channel_is_up_and_reported(chan_lab: Lab, procs: LabProcesses) -> None:
    health = cp_health(chan_lab)
    (channel,) = health["channels"]
    assert channel["state"] == "connected" and channel["channel"]
    assert health["site_config"] is True
    (point,) = cmg_points(chan_lab)
    assert point["name"] == chan_lab.config.hosts.cmg_connection_point
    assert point["channel"] == channel["channel"]
    assert "CN=cmgcp.corp.lab.test" in point["subject"]
    log = log_text(chan_lab, "cmg", "CMGService.log")
    assert re.search(r"Connection point cmgcp\.corp\.lab\.test connected: channel \w+", log)


def test_bodies_pass_byte_identical_both_ways(chan_lab: Lab, client: httpx.Client, upstream: Upstream) -> None:
    body = os.urandom(300_000) + b"\x00\xff" * 10
    auth = bearer(chan_lab)
    r = client.request(
        "CCM_POST",
        proxy_url(chan_lab, "echo"),
        content=body,
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.content == body
    assert r.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
    seen = upstream.seen[-1]
    assert seen["method"] == "CCM_POST" and seen["body"] == body
    assert seen["tls_subject"].startswith("CN=cmgcp.corp.lab.test")  # the point's own certificate
    assert seen["headers"]["authorization"] == auth["Authorization"]  # the MP checks the token again


def test_chunked_request_and_streamed_reply(chan_lab: Lab, client: httpx.Client, upstream: Upstream) -> None:
    parts = [os.urandom(70_000) for _ in range(5)]

    def gen() -> Iterator[bytes]:
        yield from parts

    r = client.post(proxy_url(chan_lab, "echo"), content=gen(), headers=bearer(chan_lab))
    assert r.status_code == 200 and r.content == b"".join(parts)
    r = client.get(proxy_url(chan_lab, "big?n=3000000"), headers=bearer(chan_lab))
    assert r.status_code == 200 and r.content == _pattern(3_000_000)
    r = client.get(proxy_url(chan_lab, "drip?n=5&every=0.1"), headers=bearer(chan_lab))
    assert r.status_code == 200 and r.content == b"x" * 5000


def test_paths_are_case_insensitive_and_rewritten(chan_lab: Lab, client: httpx.Client, upstream: Upstream) -> None:
    url = f"{chan_lab.url('cmg')}/ccm_proxy_SERVERAUTH/{chan_lab.config.site.role_id}/Echo?x=1&y=%20z"
    r = client.post(url, content=b"hello", headers=bearer(chan_lab))
    assert r.status_code == 200 and r.content == b"hello"
    assert upstream.seen[-1]["path"] == "/Echo" and upstream.seen[-1]["query"] == "x=1&y=%20z"
    cmg = client.get(
        f"{chan_lab.url('cmg')}/_lab/requests?path=echo", headers={"Authorization": f"Bearer {chan_lab.admin_token()}"}
    ).json()["requests"][0]
    assert cmg["rewritten_url"] == f"{chan_lab.url('management-point')}/Echo?x=1&y=%20z"
    assert cmg["auth_kind"] == "CCMToken" and cmg["connection_point"].startswith("cmgcp.corp.lab.test#")
    cp = httpx.get(f"http://127.0.0.1:{chan_lab.port('cmg-connection-point')}/_lab/requests").json()["requests"][0]
    assert cp["rewritten_url"] == cmg["rewritten_url"] and cp["status"] == 200
    # what was really forwarded: the gateway's own name, the canonical family, the parsed parts
    assert (
        cp["url"]
        == cmg["forwarded_url"]
        == (f"https://{chan_lab.config.hosts.cmg}/CCM_Proxy_ServerAuth/{chan_lab.config.site.role_id}/Echo?x=1&y=%20z")
    )


def test_unpublished_urls_are_404_at_the_cmg(chan_lab: Lab, client: httpx.Client, upstream: Upstream) -> None:
    before = len(upstream.seen)
    role = chan_lab.config.site.role_id
    for path in (
        f"/CCM_Proxy_ServerAuth/{role}/SMS_MP/.sms_aut?MPLIST",  # not in this site's list
        f"/CCM_Proxy_ServerAuth/{role + 1}/echo",  # unknown role ID
        "/CCM_Proxy_ServerAuth/notanumber/echo",
        "/something/else",
        "/CCM_Proxy_MutualAuth",
    ):
        r = client.get(f"{chan_lab.url('cmg')}{path}", headers=bearer(chan_lab))
        assert r.status_code == 404, path
        assert r.json()["Error"] == "NotFound"
    assert len(upstream.seen) == before


def test_mutual_auth_identity_reaches_the_upstream(chan_lab: Lab, procs: LabProcesses, upstream: Upstream) -> None:
    device = chan_lab.pki.issue_client("device-chan")
    with lab_client(chan_lab, cert=(device.cert_path, device.key_path)) as c:
        r = c.post(
            proxy_url(chan_lab, "echo", "MutualAuth"), content=b"pki", headers={"Client-Cert": ":AAAA:"}
        )  # a client cannot speak for the CMG
    assert r.status_code == 200 and r.content == b"pki"
    header = upstream.seen[-1]["headers"]["client-cert"]
    assert header.startswith(":") and header.endswith(":")
    forwarded = x509.load_der_x509_certificate(base64.b64decode(header.strip(":")))
    assert forwarded == device.cert()
    # ServerAuth never forwards a client certificate, and strips the client's header
    with lab_client(chan_lab) as c:
        r = c.post(proxy_url(chan_lab, "echo"), content=b"t", headers={**bearer(chan_lab), "Client-Cert": ":AAAA:"})
    assert r.status_code == 200 and "client-cert" not in upstream.seen[-1]["headers"]


def test_body_limit_is_413(chan_lab: Lab, client: httpx.Client, upstream: Upstream) -> None:
    before = len(upstream.seen)
    too_big = b"x" * (4 * 1024 * 1024 + 1)
    r = client.post(proxy_url(chan_lab, "echo"), content=too_big, headers=bearer(chan_lab))
    assert r.status_code == 413

    def gen() -> Iterator[bytes]:
        for _ in range(70):
            yield b"y" * 65536

    r = client.post(proxy_url(chan_lab, "echo"), content=gen(), headers=bearer(chan_lab))
    assert r.status_code == 413
    assert len(upstream.seen) == before
    r = client.get(proxy_url(chan_lab, "big?n=5000000"), headers=bearer(chan_lab))
    assert r.status_code == 502  # the reply is over the limit too


def test_slow_upstream_is_cut_off(chan_lab: Lab, client: httpx.Client) -> None:
    started = time.monotonic()
    r = client.get(proxy_url(chan_lab, "slow?s=20"), headers=bearer(chan_lab))
    elapsed = time.monotonic() - started
    assert r.status_code == 504, r.text
    assert 2.5 < elapsed < 8
    assert "did not answer within 3 s" in r.json()["Reason"]


def test_a_declared_body_that_stalls_is_408_and_closed(chan_lab: Lab, procs: LabProcesses, upstream: Upstream) -> None:
    """Attack (issue 20 review, 4): an authenticated MutualAuth client declares a 60 KB body (one channel frame,
    read whole before forwarding), sends 1 KB and stalls. The CMG answers 408 in its error shape within its
    timeout (CMGLAB_UPSTREAM_TIMEOUT, 3 s here) and closes the connection; nothing reaches the site."""
    device = chan_lab.pki.issue_client("device-stall")
    before = len(upstream.seen)
    path = f"/CCM_Proxy_MutualAuth/{chan_lab.config.site.role_id}/echo"
    host = f"{chan_lab.config.hosts.cmg}:{chan_lab.port('cmg')}"
    request = f"CCM_POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 60000\r\n\r\n"
    # the bound is 3 s; 20 s is generous for a loaded machine
    got = raw_https(
        chan_lab,
        "cmg",
        request.encode() + b"x" * 1000,
        timeout=20,
        cert=(device.cert_path, device.key_path),
        must_close=True,
    )
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), got[:300]
    assert b"connection: close" in head.lower()
    assert b'"Error":"RequestTimeout"' in body and b"60000 bytes declared" in body
    assert len(upstream.seen) == before
    wait_for(
        lambda: re.search(
            rf"CCM_POST {re.escape(path)} from \S+: 408 RequestTimeout", log_text(chan_lab, "cmg", "CMGService.log")
        ),
        what="the 408 in CMGService.log",
    )


def test_a_refusal_before_the_body_closes_the_connection(chan_lab: Lab, upstream: Upstream) -> None:
    """Attack (issue 20 review): an unauthenticated client declares a body, sends a little of it and trickles
    the rest. The CMG refuses the request (401, no token) without reading the body, and closes the connection
    instead of waiting for bytes it will never read; nothing reaches the site."""
    before = len(upstream.seen)
    host = f"{chan_lab.config.hosts.cmg}:{chan_lab.port('cmg')}"
    head = f"CCM_POST {proxy_url(chan_lab, 'CCM_STS').split(host, 1)[1]} HTTP/1.1\r\nHost: {host}\r\n"
    # the CMG answers at once; 20 s is generous for a loaded machine
    got = raw_https(
        chan_lab, "cmg", f"{head}Content-Length: 100000\r\n\r\n".encode() + b"{" * 10, timeout=20, must_close=True
    )
    head_out = got.partition(b"\r\n\r\n")[0].lower()
    assert head_out.startswith(b"http/1.1 401 "), got[:300]
    assert b"connection: close" in head_out
    assert len(upstream.seen) == before


def test_logs_have_the_seed_lines(chan_lab: Lab, client: httpx.Client) -> None:
    for _ in range(3):
        assert (
            client.post(
                proxy_url(chan_lab, "CCM_STS"), content=b"{}", headers={"Authorization": "Bearer x"}
            ).status_code
            == 401
        )
    token, *_ = chan_lab.site_signer().bulk_token()
    r = client.post(
        proxy_url(chan_lab, "CCM_STS"),
        content=b'{"ProofType":"BulkRegistration"}',
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200
    role = chan_lab.config.site.role_id
    summary = re.compile(
        rf"RequestUri: /CCM_PROXY_SERVERAUTH/{role}/CCM_STS\s+RequestCount: (\d+)\s+RequestSize: "
        r"\d+ Bytes\s+ResponseCount: \d+\s+ResponseSize: \d+ Bytes\s+AverageElapsedTime: \d+ ms"
        r"  \$\$<CMGService><\d\d-\d\d-\d{4} [\d:.]+[+-]\d+><thread=\d+ \(0x[0-9A-F]+\)>"
    )
    wait_for(lambda: summary.search(log_text(chan_lab, "cmg", "CMGService.log")), what="CMGService summary")
    # seed 001 §3.2: the site server's copy, CMG-<CMG name>-ProxyService_IN_<instance>-CMGService.log
    synced = f"CMG-{chan_lab.config.hosts.cmg.split('.')[0]}-ProxyService_IN_0-CMGService.log"
    wait_for(lambda: summary.search(log_text(chan_lab, "site-server", synced)), what="the site server's copy")
    cp_log = log_text(chan_lab, "cmg-connection-point", "SMS_CLOUD_PROXYCONNECTOR.log")
    assert re.search(r"Switched to internal URL\. Replaced '\S+' in\s+'\S+' with '\S+' and got '", cp_log)
    assert re.search(
        r"MessageID: [0-9a-f-]{36} RequestURI: https://\S+/CCM_STS EndpointName: CCM_STS "
        r"ResponseHeader: HTTP/1\.1 200 OK.*ElapsedTime: \d+ ms",
        cp_log,
    )
    assert re.search(
        rf"Replaced 'https://{chan_lab.config.hosts.cmg}/CCM_Proxy_ServerAuth/{role}/CCM_STS' in\s+"
        rf"'\S+' with 'https://{chan_lab.config.hosts.management_point}:\d+/CCM_STS'",
        cp_log,
    )


def test_connector_takes_only_registered_points(chan_lab: Lab, procs: LabProcesses) -> None:
    from cmglab.wire import httpclient
    from cmglab.wire.cmg_channel import PATH

    other = chan_lab.pki.issue_client("not-a-cp.corp.lab.test")
    ctx = httpclient.ssl_context(ca_bundle=chan_lab.pki.ca_bundle, client_cert=(other.cert_path, other.key_path))

    async def attempt() -> int:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        try:
            async with connect(
                f"wss://{chan_lab.config.hosts.cmg}:{chan_lab.config.ports.cmg_connector}{PATH}",
                ssl=ctx,
                proxy=None,
                host="127.0.0.1",
                port=chan_lab.config.ports.cmg_connector,
                server_hostname=chan_lab.config.hosts.cmg,
            ):
                return 101
        except InvalidStatus as e:
            return e.response.status_code
        except (OSError, WebSocketException):
            return 0  # dropped as its TLS handshake completed: no HTTP answer at all

    assert asyncio.run(attempt()) == 0
    log = log_text(chan_lab, "cmg", "CMGService.log")
    assert re.search(
        r"Rejected connection from \S+ at the connector's TLS handshake: certificate .*CN=not-a-cp\.corp\.lab\.test.* "
        r"is not a registered connection point",
        log,
    )
    assert len(cmg_points(chan_lab)) == 1
