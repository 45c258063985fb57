"""The CMG's per-request trims (issue 20) keep their meaning: a remembered route is the one `read` gives, a refused
target is refused every time (never remembered), a long target is read afresh; the client's headers go on in one
pass exactly as `end_to_end` then `propagate` sent them (hop-by-hop, identity and trace headers never)."""

from __future__ import annotations

import pytest

from cmglab.services.cmg import routing
from cmglab.services.cmg.proxy import _DROP_FROM_CLIENT, _forwarded_headers
from cmglab.wire.cmg_channel import end_to_end
from cmglab.wire.tracing import ServerSpan, propagate

ROLE = "72057594037927939"


def test_a_remembered_route_is_the_one_read_gives() -> None:
    raw, query = f"/CCM_Proxy_MutualAuth/{ROLE}/CCM_STS", ""
    first = routing.parse(raw, query)
    assert first == routing.read(raw, query) and isinstance(first, routing.ProxyRoute)
    assert routing.parse(raw, query) is first  # the same immutable route, not read again
    assert routing.parse(raw.lower(), query) == routing.read(raw.lower(), query)  # its own entry, the same meaning
    assert routing.parse(raw, "a=1") != first  # the query is part of the key


@pytest.mark.parametrize(
    "raw", [f"/CCM_Proxy_ServerAuth/{ROLE}/a%2fb", f"/CCM_Proxy_ServerAuth/{ROLE}/../x", "no-slash", "/a//b"]
)
def test_a_refused_target_is_refused_each_time(raw: str) -> None:
    for _ in range(3):
        with pytest.raises(routing.UrlRefused):
            routing.parse(raw)


def test_a_long_target_is_read_each_time_with_the_same_rules() -> None:
    long_rest = "/".join(["segment"] * 100)
    raw = f"/CCM_Proxy_ServerAuth/{ROLE}/{long_rest}"
    assert len(raw) > routing.REMEMBERED_TARGET
    route = routing.parse(raw)
    assert route == routing.read(raw) and route is not routing.parse(raw)
    with pytest.raises(routing.UrlRefused):
        routing.parse(raw + "/%2e%2e/x")


def test_the_client_headers_go_on_as_before() -> None:
    raw = [
        (b"host", b"cmg.lab.test"),
        (b"content-type", b"text/xml"),
        (b"client-cert", b":AAAA:"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"),
        (b"tracestate", b"cmglab=dev:x;step:y"),
        (b"user-agent", b"ccmhttp \xe9"),
        (b"x-custom", b"1"),
        (b"x-custom", b"2"),
        (b"client-cert-chain", b":BBBB:"),
        (b"authorization", b"Bearer t"),
    ]
    span = ServerSpan.incoming((raw[6][1]).decode(), raw[7][1].decode())
    before = propagate(
        end_to_end([(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw], drop=_DROP_FROM_CLIENT), span
    )
    assert _forwarded_headers(raw, span) == before
    names = [k for k, _ in before]
    assert names[-2:] == ["traceparent", "tracestate"] and names.count("traceparent") == 1
    assert not {"client-cert", "client-cert-chain", "x-forwarded-for", "host", "connection"} & set(names)
