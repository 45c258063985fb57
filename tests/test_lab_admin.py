"""The /_lab endpoints every service has: health, recorded requests, reset and faults."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from cmglab.runtime.admin import install_lab_admin
from cmglab.runtime.lab import Lab
from cmglab.runtime.server import TLS, Listener, Service
from cmglab.wire import httpclient
from tests.support.lab import new_lab, reserve_ports
from tests.support.threaded import ThreadedService


@pytest.fixture(scope="module")
def admin_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("admin") / "lab")


@pytest.fixture(scope="module")
def service(admin_lab: Lab) -> Iterator[tuple[str, list[int]]]:
    resets: list[int] = []
    app = FastAPI()

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    install_lab_admin(
        app, service="demo", lab=admin_lab, reset=lambda: resets.append(1), health=lambda: {"detail": "fine"}
    )
    (port,) = reserve_ports(1)
    ident = admin_lab.pki.server("cmg")
    with ThreadedService(Service("demo", [Listener("demo", app, port, tls=TLS(ident.cert_path, ident.key_path))])):
        yield f"https://cmg.lab.test:{port}", resets


@pytest.fixture
def c(admin_lab: Lab, service: tuple[str, list[int]]) -> Iterator[httpx.Client]:
    port = service[0].rsplit(":", 1)[1]
    ctx = httpclient.ssl_context(ca_bundle=admin_lab.pki.ca_bundle)
    with httpclient.client(ctx=ctx, resolve=[f"cmg.lab.test:{port}:127.0.0.1"], timeout=5) as client:
        yield client


def test_health_needs_no_token(c: httpx.Client, service: tuple[str, list[int]]) -> None:
    health = c.get(f"{service[0]}/_lab/health").json()
    lab_id = health.pop("lab_id")  # which lab answers (cmglab status tells this lab from another one)
    assert health == {"service": "demo", "status": "ok", "detail": "fine"} and lab_id


def test_requests_are_recorded_newest_first(c: httpx.Client, service: tuple[str, list[int]]) -> None:
    c.get(f"{service[0]}/hello?x=1", headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    c.get(f"{service[0]}/missing")
    records = c.get(f"{service[0]}/_lab/requests").json()["requests"]
    assert [r["path"] for r in records[:2]] == ["/missing", "/hello"]
    hello = records[1]
    assert hello["status"] == 200 and hello["method"] == "GET" and hello["service"] == "demo"
    assert hello["url"] == f"{service[0]}/hello?x=1"
    assert hello["response_bytes"] == len(b'{"hello":"world"}') and hello["traceparent"].startswith("00-aaaa")
    assert records[0]["status"] == 404
    assert all(not r["path"].startswith("/_lab/") for r in records)
    only = c.get(f"{service[0]}/_lab/requests", params={"path": "hello"}).json()["requests"]
    assert {r["path"] for r in only} == {"/hello"}


def test_reset_and_faults_need_the_admin_token(c: httpx.Client, service: tuple[str, list[int]]) -> None:
    assert c.post(f"{service[0]}/_lab/reset").status_code == 401
    assert c.post(f"{service[0]}/_lab/reset", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post(f"{service[0]}/_lab/faults", json={"path": "x", "status": 500}).status_code == 401


def test_reset_clears_state(c: httpx.Client, service: tuple[str, list[int]], admin_lab: Lab) -> None:
    url, resets = service
    c.get(f"{url}/hello")
    reply = c.post(f"{url}/_lab/reset", headers={"Authorization": f"Bearer {admin_lab.admin_token()}"})
    assert reply.status_code == 200 and resets
    assert c.get(f"{url}/_lab/requests").json()["requests"] == []


def test_faults_inject_status_delay_and_drop(c: httpx.Client, service: tuple[str, list[int]], admin_lab: Lab) -> None:
    url = service[0]
    auth = {"Authorization": f"Bearer {admin_lab.admin_token()}"}
    rule = {"path": "^/HELLO$", "status": 503, "times": 1}
    assert c.post(f"{url}/_lab/faults", headers=auth, json=rule).status_code == 201
    assert c.get(f"{url}/hello").status_code == 503
    assert c.get(f"{url}/hello").status_code == 200  # used up

    c.post(f"{url}/_lab/faults", headers=auth, json={"path": "hello", "delay_ms": 300, "times": 1})
    assert c.get(f"{url}/hello").elapsed.total_seconds() >= 0.3

    c.post(f"{url}/_lab/faults", headers=auth, json={"path": "hello", "drop": True})
    with pytest.raises(httpx.RemoteProtocolError):
        c.get(f"{url}/hello")
    assert c.get(f"{url}/_lab/faults").json()["faults"][0]["drop"] is True
    assert c.delete(f"{url}/_lab/faults", headers=auth).json() == {"removed": 1}
    assert c.get(f"{url}/hello").status_code == 200
    assert c.post(f"{url}/_lab/faults", headers=auth, json={"path": "(", "status": 500}).status_code == 422
