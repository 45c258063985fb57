"""W3C trace context across client -> CMG -> channel frame -> connection point -> MP: one trace ID in every
service's `/_lab/requests`, each hop's span the parent of the next, `tracestate` carried unchanged; and
the same spans exported over OTLP/HTTP to a collector (a stub here) when `CMGLAB_OTLP_ENDPOINT` is set."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from cmglab.wire import tracing
from cmglab.wire.tracing import TraceParent
from tests.support.cmg import FAST_ENV, channel_up, cmg_points, proxy_url, wait_for
from tests.support.lab import lab_client, new_lab
from tests.support.mp import Device
from tests.support.tracing import bulk_token, traced_sts

# -- helpers the console tests share: traced requests as the agent sends them ---------------------------


def records(lab: Lab, service: str, trace_id: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{lab.port(service)}" if service == "cmg-connection-point" else lab.url(service)
    with lab_client(lab) as c:
        rows = c.get(f"{url}/_lab/requests", headers={"Authorization": f"Bearer {lab.admin_token()}"}).json()[
            "requests"
        ]
    return [r for r in rows if r.get("trace_id") == trace_id]


def hop_chain(lab: Lab, trace_id: str) -> dict[str, dict[str, Any]]:
    """The trace's record at each of CMG, connection point and MP (waits for all three)."""

    def chain() -> dict[str, dict[str, Any]] | None:
        found = {s: records(lab, s, trace_id) for s in ("cmg", "cmg-connection-point", "management-point")}
        return {s: rows[0] for s, rows in found.items()} if all(found.values()) else None

    return wait_for(chain, what=f"trace {trace_id} at CMG, connection point and MP")


# -- a tiny OTLP/HTTP collector ---------------------------------------------------------------------------


class Collector(ThreadingHTTPServer):
    spans: list[dict[str, Any]]


class _OTLPHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        request = ExportTraceServiceRequest.FromString(raw)
        for rs in request.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {a.key: a.value.string_value or a.value.int_value for a in span.attributes}
                    self.server.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex() or None,
                            "kind": span.kind,
                            "attributes": attrs,
                        }
                    )
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def otlp() -> Iterator[Collector]:
    server = Collector(("127.0.0.1", 0), _OTLPHandler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


# not lab_fixture: a lab of its own, its services export spans to this module's collector (CMGLAB_OTLP_ENDPOINT)
@pytest.fixture(scope="module")
def trace_lab(tmp_path_factory: pytest.TempPathFactory, otlp: Collector) -> Iterator[Lab]:
    lab = new_lab(tmp_path_factory.mktemp("tracing") / "lab")
    env = dict(FAST_ENV, CMGLAB_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp.server_address[1]}")
    with LabProcesses(lab, env=env) as procs:  # stopped on every way out, a failed start included
        procs.ensure("management-point", "cmg", "cmg-connection-point")
        wait_for(lambda: channel_up(lab) and cmg_points(lab), what="channel up")
        with lab_client(lab) as c:
            wait_for(
                lambda: c.get(f"{lab.url('cmg')}/_lab/health").json()["site_config"], what="site config at the CMG"
            )
        yield lab


# -- the header formats -----------------------------------------------------------------------------------


def test_traceparent_parse_and_format() -> None:
    tp = TraceParent.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert tp == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert tp.header() == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    child = tp.child()
    assert child.trace_id == tp.trace_id and child.span_id != tp.span_id and len(child.span_id) == 16
    for bad in (
        "",
        "garbage",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ):
        assert TraceParent.parse(bad) is None, bad
    # a future version may append fields: keep the known part
    assert TraceParent.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz") is not None


def test_tracestate_member_is_valid_and_keeps_other_vendors() -> None:
    state = tracing.with_cmglab("congo=t61rcWkgMzE,cmglab=dev:OLD;step:x", "LAB,01=x;y:z", "ccmsts")
    assert state == "cmglab=dev:LAB_01_x_y_z;step:ccmsts,congo=t61rcWkgMzE"
    member_value = state.split(",")[0].split("=", 1)[1]
    assert "," not in member_value and "=" not in member_value and all(0x20 < ord(ch) < 0x7F for ch in member_value)
    assert tracing.cmglab_fields(state) == {"device": "LAB_01_x_y_z", "step": "ccmsts"}
    assert tracing.cmglab_fields("congo=t61rcWkgMzE") == {}


def test_agent_operation_tags_every_request_with_one_trace() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with httpx.Client(
        transport=httpx.MockTransport(handler), event_hooks={"request": [tracing.httpx_hook("LAB01")]}
    ) as c:
        with tracing.operation("LAB01", "registration"):
            c.post("https://cmg.lab.test/CCM_Proxy_ServerAuth/1/ccm_system_tokenauth/request")
            c.post("https://cmg.lab.test/CCM_Proxy_ServerAuth/1/ccm_system_tokenauth/request")
        c.get("https://cmg.lab.test/CCM_Proxy_ServerAuth/AADAuthInfo?TenantID=x")
    parents = [TraceParent.parse(r.headers["traceparent"]) for r in seen]
    assert all(parents)
    assert parents[0].trace_id == parents[1].trace_id != parents[2].trace_id  # type: ignore[union-attr]
    assert parents[0].span_id != parents[1].span_id  # type: ignore[union-attr]
    assert tracing.cmglab_fields(seen[0].headers["tracestate"]) == {"device": "LAB01", "step": "registration"}
    assert tracing.cmglab_fields(seen[2].headers["tracestate"]) == {"device": "LAB01", "step": "aadinfo"}


# -- across the services ----------------------------------------------------------------------------------


def test_one_trace_across_cmg_connection_point_and_mp(trace_lab: Lab) -> None:
    device = Device(name="TRACE01")
    reply, headers = traced_sts(trace_lab, device, bulk_token(trace_lab))
    assert reply.status_code == 200, reply.text
    sent = TraceParent.parse(headers["traceparent"])
    assert sent is not None
    hops = hop_chain(trace_lab, sent.trace_id)
    cmg, cp, mp = hops["cmg"], hops["cmg-connection-point"], hops["management-point"]
    assert cmg["parent_span_id"] == sent.span_id and cmg["traceparent"] == headers["traceparent"]
    assert cp["parent_span_id"] == cmg["span_id"]  # the frame carried the CMG's span as the parent
    assert mp["parent_span_id"] == cp["span_id"]
    assert mp["traceparent"] == f"00-{sent.trace_id}-{cp['span_id']}-01"
    assert len({cmg["span_id"], cp["span_id"], mp["span_id"], sent.span_id}) == 4
    for hop in (cmg, cp, mp):
        assert hop["tracestate"] == headers["tracestate"] == "cmglab=dev:TRACE01;step:ccmsts"
    assert cmg["rewritten_url"] == cp["rewritten_url"] == f"{trace_lab.url('management-point')}/CCM_STS"
    assert mp["client_cert_subject"].startswith("CN=cmgcp.corp.lab.test")


def test_an_untraced_client_still_gets_one_trace_behind_the_cmg(trace_lab: Lab) -> None:
    device = Device(name="NOTRACE")
    body = json.dumps(device.proof("BulkRegistration", "not-a-token")).encode()
    with lab_client(trace_lab) as c:
        c.get(f"{trace_lab.url('cmg')}/_lab/health")  # not recorded: /_lab/ requests never are
        r = c.post(
            proxy_url(trace_lab, "CCM_STS"),
            content=body,
            headers={"Authorization": f"Bearer {bulk_token(trace_lab)}", "Content-Type": "application/json"},
        )
    assert r.status_code in (400, 401, 403)  # refused at the MP: the proof does not match the token
    cmg = next(
        row for row in records_all(trace_lab, "cmg") if row["path"].endswith("/CCM_STS") and row["traceparent"] is None
    )
    assert cmg["parent_span_id"] is None and len(cmg["trace_id"]) == 32
    hops = hop_chain(trace_lab, cmg["trace_id"])
    assert hops["cmg-connection-point"]["parent_span_id"] == cmg["span_id"]
    assert hops["management-point"]["status"] == r.status_code and hops["management-point"]["reason"]


def records_all(lab: Lab, service: str) -> list[dict[str, Any]]:
    with lab_client(lab) as c:
        return c.get(
            f"{lab.url(service)}/_lab/requests", headers={"Authorization": f"Bearer {lab.admin_token()}"}
        ).json()["requests"]


def test_spans_are_exported_over_otlp(trace_lab: Lab, otlp: Collector) -> None:
    reply, headers = traced_sts(trace_lab, Device(name="OTEL01"), bulk_token(trace_lab))
    assert reply.status_code == 200, reply.text
    sent = TraceParent.parse(headers["traceparent"])
    assert sent is not None

    def exported() -> dict[str, dict[str, Any]] | None:
        spans = {s["service"]: s for s in list(otlp.spans) if s["trace_id"] == sent.trace_id}
        return spans if len(spans) == 3 else None

    spans = wait_for(exported, what="three spans at the collector")
    hops = hop_chain(trace_lab, sent.trace_id)
    for service, span in spans.items():  # the exported span is the recorded one
        assert span["span_id"] == hops[service]["span_id"]
        assert span["parent_span_id"] == hops[service]["parent_span_id"]
        assert span["kind"] == 2  # SERVER
        assert span["attributes"]["cmglab.device"] == "OTEL01" and span["attributes"]["cmglab.step"] == "ccmsts"
    assert spans["cmg"]["parent_span_id"] == sent.span_id
    assert spans["management-point"]["parent_span_id"] == spans["cmg-connection-point"]["span_id"]
    assert spans["cmg"]["name"].endswith("/CCM_STS")
    assert spans["cmg"]["attributes"]["cmglab.rewritten_url"].endswith("/CCM_STS")
    assert spans["cmg"]["attributes"]["http.response.status_code"] == 200
