"""The lab console's API: services and their health, devices, traces merged from every service's records
(JSON and a server-sent-events stream), the page and its permalinks, read-only without the admin token."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from cryptography import x509

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import SERVICES
from cmglab.wire.tracing import TraceParent
from tests.support.cmg import cmg_has_site_config, wait_for
from tests.support.lab import lab_client, lab_fixture, new_lab
from tests.support.mp import Device
from tests.support.tracing import bulk_token, traced_sts

# the console comes last: `cmglab up` starts the same set
console = lab_fixture(*SERVICES, autouse=True, ready=cmg_has_site_config)


def api(lab: Lab, path: str, **params: Any) -> Any:
    with lab_client(lab) as c:
        reply = c.get(f"{lab.url('console')}{path}", params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def trace_of(lab: Lab, device: str, hops: int) -> dict[str, Any]:
    """The device's newest trace once the console has all its hops."""

    def found() -> dict[str, Any] | None:
        traces = api(lab, "/api/traces", device=device)["traces"]
        return traces[0] if traces and traces[0]["hops"] >= hops else None

    return wait_for(found, what=f"a {hops}-hop trace of {device} at the console")


def test_services_are_listed_with_their_health(lab: Lab) -> None:
    def all_healthy() -> list[dict[str, Any]] | None:
        services = api(lab, "/api/services")["services"]
        return services if all(s["health"] == "healthy" for s in services) else None

    services = wait_for(all_healthy, what="every service healthy at the console")
    assert [s["name"] for s in services] == [
        "entra",
        "cmg",
        "cmg-connection-point",
        "management-point",
        "distribution-point",
        "pki",
    ]
    cmg = next(s for s in services if s["name"] == "cmg")
    assert cmg["url"] == lab.url("cmg") and cmg["detail"]["connection_points"]


def test_a_trace_merges_the_hops_of_every_service(lab: Lab) -> None:
    reply, headers = traced_sts(lab, Device(name="CONS01"), bulk_token(lab))
    assert reply.status_code == 200, reply.text
    summary = trace_of(lab, "CONS01", hops=3)
    sent = TraceParent.parse(headers["traceparent"])
    assert sent is not None and summary["trace_id"] == sent.trace_id
    assert summary["step"] == "ccmsts" and summary["status"] == 200 and not summary["failed"]
    assert summary["services"] == ["cmg", "cmg-connection-point", "management-point"]

    trace = api(lab, f"/api/traces/{sent.trace_id}")
    hops = trace["hop_list"]
    assert [(h["caller"], h["service"]) for h in hops] == [
        ("client", "cmg"),
        ("cmg", "cmg-connection-point"),
        ("cmg-connection-point", "management-point"),
    ]
    assert [(e["kind"], e["hop"]) for e in trace["events"]] == [
        ("request", 0),
        ("request", 1),
        ("request", 2),
        ("reply", 2),
        ("reply", 1),
        ("reply", 0),
    ]
    mp_url = f"{lab.url('management-point')}/CCM_STS"
    assert hops[0]["rewritten_url"] == mp_url and hops[2]["url"] == mp_url
    assert hops[0]["auth_kind"] == "BulkRegistrationToken"
    assert hops[2]["client_cert_subject"].startswith("CN=cmgcp.corp.lab.test")
    assert all(h["elapsed_ms"] > 0 and h["request_bytes"] > 0 for h in hops)

    devices = {d["name"]: d for d in api(lab, "/api/devices")["devices"]}
    assert devices["CONS01"]["steps"] == {"ccmsts": True}
    assert api(lab, "/api/traces", device="CONS01", step="location")["traces"] == []


def test_a_refusal_names_the_service_and_its_reason(lab: Lab) -> None:
    reply, _ = traced_sts(lab, Device(name="CONS02"), bulk_token(lab, blocked=True))
    assert reply.status_code == 403
    summary = trace_of(lab, "CONS02", hops=3)
    assert summary["failed"] and summary["reason"].startswith("BulkTokenBlocked: bulk registration token")
    trace = api(lab, f"/api/traces/{summary['trace_id']}")
    origin = trace["hop_list"][trace["failure_origin"]]
    assert origin["service"] == "management-point" and origin["status"] == 403


def test_server_sent_events_deliver_a_new_hop(lab: Lab) -> None:
    events: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def listen() -> None:
        with (
            lab_client(lab, timeout=20) as c,
            c.stream("GET", f"{lab.url('console')}/api/events", params={"device": "CONS03"}) as stream,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            event = ""
            for line in stream.iter_lines():
                subscribed.set()
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "trace":
                    events.append(json.loads(line.removeprefix("data: ")))
                    if events[-1]["hops"] >= 3:
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert subscribed.wait(10), "the event stream did not start"
    traced_sts(lab, Device(name="CONS03"), bulk_token(lab))
    thread.join(15)
    assert events, "no trace event arrived"
    assert {e["device"] for e in events} == {"CONS03"}  # the stream's filter held
    assert events[-1]["step"] == "ccmsts" and events[-1]["hops"] == 3


def test_read_only_without_the_admin_token(lab: Lab, admin_headers: dict[str, str]) -> None:
    console = lab.url("console")
    with lab_client(lab) as c:
        assert c.post(f"{console}/api/services/pki/reset").status_code == 401
        assert c.post(f"{console}/api/services/pki/reset", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post(f"{console}/_lab/reset").status_code == 401
        done = c.post(f"{console}/api/services/pki/reset", headers=admin_headers)
        assert done.status_code == 200 and done.json() == {"service": "pki", "status": 200}
        assert c.post(f"{console}/api/services/nowhere/reset", headers=admin_headers).status_code == 404


def test_the_page_and_its_permalinks(lab: Lab) -> None:
    with lab_client(lab) as c:
        for path in ("/", "/trace/0123456789abcdef0123456789abcdef"):
            page = c.get(f"{lab.url('console')}{path}")
            assert page.status_code == 200 and '<script src="/static/console.js">' in page.text
        script = c.get(f"{lab.url('console')}/static/console.js")
        assert script.status_code == 200 and "EventSource" in script.text
        assert c.get(f"{lab.url('console')}/api/traces/0123456789abcdef0123456789abcdef").status_code == 404
    # nothing loaded from elsewhere (scripts, styles, fonts): the lab has no internet
    external = re.compile(r"""(src|href)\s*=\s*["']https?:|url\(\s*["']?https?:|@import|fetch\(\s*["']https?:""")
    static = Path(__file__).resolve().parents[1] / "cmglab" / "services" / "console" / "static"
    for f in static.iterdir():
        assert not external.search(f.read_text()), f.name


def test_an_older_lab_gets_the_console_at_init(tmp_path: Path) -> None:
    lab = new_lab(tmp_path / "lab")
    ident = lab.pki.server("console")
    ident.cert_path.unlink()
    hosts = lab.dir / "hosts"
    hosts.write_text("".join(line + "\n" for line in hosts.read_text().splitlines() if "console" not in line))
    again, created = Lab.init(lab.dir)
    assert "pki/console" in created and "hosts (console.lab.test)" in created, created
    san = again.pki.server("console").cert().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"console.lab.test", "console"} <= set(san.get_values_for_type(x509.DNSName))
    assert f"console.lab.test:{lab.port('console')}:127.0.0.1" in hosts.read_text()
