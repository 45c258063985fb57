"""Issue 15: the CMG is no way around itself. The CMG authorises the path it parsed and forwards a URL built
from those parsed parts and its own name only; the connection point parses that URL again and takes only
what the site published. Attacks over raw TLS sockets (bytes httpx would refuse to send): a `Host` that
smuggles a path, a second `Host`, absolute-form targets, `..` and encoded separators, role-ID tampering,
unpublished vdirs, Content-Length/Transfer-Encoding games. Each is refused at the CMG, and the MP records no
request from it. Plus in-process unit tests of the parsing and the rewrite."""

from __future__ import annotations

import pytest

from cmglab.runtime.lab import Lab
from cmglab.services.cmg import routing
from cmglab.services.cmg_connection_point.rewrite import RewriteError, rewrite
from cmglab.wire import cmg_urls
from cmglab.wire.cloud_config import CloudConfig, PublishedEndpoint
from tests.support.cmg import cmg_serving
from tests.support.lab import lab_fixture
from tests.support.sec_attacks import admin, client, last_seq, raw_https, records_after, status_of

ROLE = "72057594037927939"
CONFIG = CloudConfig(
    allow_cmg=True,
    endpoints={
        ROLE: PublishedEndpoint(
            internal_url="https://mp.corp.lab.test:8443",
            paths=["CCM_STS", "ccm_system/request", "SMS_MP", "CCM_Client"],
        )
    },
)


# -- in-process: parsing and rewrite -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authority,ok",
    [
        ("cmg.lab.test", True),
        ("CMG.LAB.TEST", True),
        ("cmg.lab.test:443", True),
        ("cmg.lab.test:8443", False),
        ("x/CCM_Proxy_ServerAuth/1/_lab/clients?", False),
        ("cmg.lab.test@evil", False),
        ("evil", False),
        ("cmg.lab.test/", False),
        ("", False),
        ("cmg.lab.test:443/x", False),
    ],
)
def test_authority_must_be_the_gateway(authority: str, ok: bool) -> None:
    assert cmg_urls.same_authority(authority, "cmg.lab.test", 443) is ok


@pytest.mark.parametrize(
    "raw",
    [
        "/CCM_Proxy_ServerAuth/1/CCM_STS/../_lab/clients",
        "/CCM_Proxy_ServerAuth/1/./CCM_STS",
        "/CCM_Proxy_ServerAuth/1/CCM_STS/%2e%2e/_lab",
        "/CCM_Proxy_ServerAuth/1/CCM_STS%2F..%2F_lab",
        "/CCM_Proxy_ServerAuth/1/CCM_STS%5c..",
        "/CCM_Proxy_ServerAuth/1/CCM_STS/%252e%252e/x",
        "/CCM_Proxy_ServerAuth/1//CCM_STS",
        "/CCM_Proxy_ServerAuth/1/CCM_STS\\..\\x",
        "https://evil/CCM_STS",
        "*",
        "/CCM_Proxy_ServerAuth/1/CCM_STS%00",
        "/CCM_Proxy_ServerAuth/1/%ff%fe",
    ],
)
def test_ambiguous_targets_are_refused(raw: str) -> None:
    with pytest.raises(cmg_urls.UrlRefused):
        routing.parse(raw)


def test_routes_are_parsed_from_validated_segments() -> None:
    route = routing.parse(f"/ccm_proxy_SERVERAUTH/{ROLE}/CCM_Client/a%20b.txt", "x=1&y=%20z")
    assert isinstance(route, routing.ProxyRoute)
    assert (route.family, route.role_id, route.rest, route.endpoint) == (
        "ServerAuth",
        ROLE,
        "CCM_Client/a b.txt",
        "CCM_Client",
    )
    assert (
        route.url("cmg.lab.test") == f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/CCM_Client/a%20b.txt?x=1&y=%20z"
    )
    assert routing.parse("/CCM_Proxy_ServerAuth/AADAuthInfo") == routing.AADAuthInfoRoute()
    assert routing.parse("/CCM_Proxy_ServerAuth/\u0661\u0662/CCM_STS") is None  # Arabic-Indic digits: no role ID
    assert routing.parse(f"/CCM_Proxy_ServerAuth/{ROLE}/") is not None  # a trailing slash is not ambiguous
    assert routing.parse("/downloadrestservice.svc/content/P/f.cab") == routing.ContentFileRoute("P", "f.cab")


def test_rewrite_builds_the_internal_url_from_parsed_parts() -> None:
    rw = rewrite(f"https://cmg.lab.test/CCM_Proxy_MutualAuth/{ROLE}/ccm_system/request?a=b", CONFIG, "cmg.lab.test")
    assert rw.internal_url == "https://mp.corp.lab.test:8443/ccm_system/request?a=b" and rw.endpoint == "ccm_system"
    rw = rewrite(f"https://CMG.lab.test/CCM_Proxy_ServerAuth/{ROLE}/SMS_MP/.sms_aut?MPLIST", CONFIG, "cmg.lab.test")
    assert rw.internal_url == "https://mp.corp.lab.test:8443/SMS_MP/.sms_aut?MPLIST"


@pytest.mark.parametrize(
    "url",
    [
        # the original attack, as the CMG used to forward it: the client's Host spliced into the URL
        f"https://x/CCM_Proxy_ServerAuth/{ROLE}/_lab/clients?/CCM_Proxy_ServerAuth/{ROLE}/CCM_STS",
        f"https://cmg.lab.test:9999/CCM_Proxy_ServerAuth/{ROLE}/CCM_STS",
        f"https://u@cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/CCM_STS",
        f"http://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/CCM_STS",
        f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/_lab/clients",
        f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/CCM_Cloud/config",
        f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/ccm_system_windowsauth/request",
        f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/SMS_MP_WindowsAuth/.sms_aut?MPLIST",
        f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/CCM_STS/../_lab/clients",
        f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/CCM_STS%2f..%2f_lab",
        f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}0/CCM_STS",
        f"https://cmg.lab.test/CCM_Proxy_ServerAuth/{ROLE}/CCM_STS#frag",
        "https://cmg.lab.test/_lab/clients",
    ],
)
def test_connection_point_refuses_what_was_not_published(url: str) -> None:
    with pytest.raises(RewriteError):
        rewrite(url, CONFIG, "cmg.lab.test")


# -- over the network ----------------------------------------------------------------------------------------


cmg_lab = lab_fixture("management-point", "cmg", "cmg-connection-point", ready=cmg_serving)


def _token(lab: Lab) -> str:
    token, _ = lab.site_signer().ccm_token(token_type="Device", sms_id="GUID:11111111-2222-3333-4444-555555555555")
    return token


def _request(
    lab: Lab, target: str, *, host: str | None = None, extra: str = "", method: str = "GET", body: bytes = b""
) -> bytes:
    host = host if host is not None else f"{lab.config.hosts.cmg}:{lab.port('cmg')}"
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {_token(lab)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _attack(lab: Lab, data: bytes) -> tuple[int, list[dict[str, object]]]:
    """Send the raw request; answer its status and what the MP recorded meanwhile (it must be nothing)."""
    before = last_seq(lab, "management-point")
    status = status_of(raw_https(lab, "cmg", data))
    return status, [r for r in records_after(lab, "management-point", before) if not _site_config_poll(r)]


def _site_config_poll(record: dict[str, object]) -> bool:
    """The connection point's own poll for the site's CMG configuration (its httpx client, every few seconds),
    which may land while an attack runs; a forwarded attack carries no such User-Agent (the raw requests send
    none). The MP records the path IIS-style, lower-cased."""
    path, agent = str(record.get("path", "")), str(record.get("user_agent", ""))
    return path.lower() == "/ccm_cloud/config" and agent.startswith("python-httpx/")


def test_a_host_header_cannot_choose_the_mp_path(cmg_lab: Lab) -> None:
    role = cmg_lab.config.site.role_id
    name = f"{cmg_lab.config.hosts.cmg}:{cmg_lab.port('cmg')}"
    tokenauth = f"/CCM_Proxy_ServerAuth/{role}/ccm_system_tokenauth/request"
    for host in (
        f"x/CCM_Proxy_ServerAuth/{role}/_lab/clients?",
        f"{name}/CCM_Proxy_ServerAuth/{role}/CCM_Cloud/config?",
        "evil.example",
        f"{cmg_lab.config.hosts.cmg}:1",
        f"{name}@evil",
        f"{name}#",
    ):
        status, seen = _attack(cmg_lab, _request(cmg_lab, tokenauth, host=host))
        assert status == 400 and seen == [], (host, status, seen)
    status, seen = _attack(cmg_lab, _request(cmg_lab, tokenauth, extra=f"Host: {name}\r\n"))  # two Host headers
    assert status == 400 and seen == []


def test_absolute_form_and_path_tricks_are_refused(cmg_lab: Lab) -> None:
    role = cmg_lab.config.site.role_id
    base = f"/CCM_Proxy_ServerAuth/{role}"
    for target in (
        f"https://evil{base}/ccm_system_tokenauth/request",
        f"https://{cmg_lab.config.hosts.cmg}{base}/ccm_system_tokenauth/request",
        f"{base}/ccm_system_tokenauth/request/../../_lab/clients",
        f"{base}/ccm_system_tokenauth/..%2f..%2f_lab/clients",
        f"{base}/CCM_STS/%2e%2e/CCM_Cloud/config",
        f"{base}/CCM_STS/%252e%252e/x",
        f"{base}/ccm_system_tokenauth\\..\\ccm_system_windowsauth/request",
    ):
        status, seen = _attack(cmg_lab, _request(cmg_lab, target))
        assert status in (400, 404) and seen == [], (target, status, seen)


def test_unpublished_vdirs_and_foreign_role_ids_are_404(cmg_lab: Lab) -> None:
    role = cmg_lab.config.site.role_id
    for rest in (
        "_lab/clients",
        "CCM_Cloud/config",
        "ccm_system_windowsauth/request",
        "SMS_MP_WindowsAuth/.sms_aut",
        "ccm_system_tokenauthX/request",
    ):
        status, seen = _attack(cmg_lab, _request(cmg_lab, f"/CCM_Proxy_ServerAuth/{role}/{rest}?MPLIST"))
        assert status == 404 and seen == [], (rest, status, seen)
    for other in (f"{role}0", "1", "-1", "%D9%A1", f"{role}%00"):  # U+0661 is a digit to str.isdigit
        target = f"/CCM_Proxy_ServerAuth/{other}/ccm_system_tokenauth/request"
        status, seen = _attack(cmg_lab, _request(cmg_lab, target))
        assert status in (400, 404) and seen == [], (other, status, seen)


def test_request_smuggling_shapes_are_refused(cmg_lab: Lab) -> None:
    target = f"/CCM_Proxy_ServerAuth/{cmg_lab.config.site.role_id}/ccm_system_tokenauth/request"
    smuggled = b"0\r\n\r\nGET /_lab/clients HTTP/1.1\r\nHost: mp\r\n\r\n"
    shapes = [
        ("CL+TE", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", smuggled),
        ("two CLs", "Content-Length: 4\r\nContent-Length: 40\r\n", b"abcd"),
        ("CL list", "Content-Length: 4, 40\r\n", b"abcd"),
        ("TE not chunked", "Transfer-Encoding: gzip, chunked\r\n", smuggled),
        ("TE obfuscated", "Transfer-Encoding : chunked\r\n", smuggled),
        ("negative CL", "Content-Length: -1\r\n", b""),
        ("a second Authorization", "Authorization: Bearer other\r\nContent-Length: 0\r\n", b""),
    ]
    for name, extra, body in shapes:
        status, seen = _attack(cmg_lab, _request(cmg_lab, target, method="CCM_POST", extra=extra, body=body))
        assert status in (400, 501) and seen == [], (name, status, seen)


def test_the_record_shows_what_was_forwarded(cmg_lab: Lab) -> None:
    role = cmg_lab.config.site.role_id
    before = last_seq(cmg_lab, "cmg")
    reply = raw_https(cmg_lab, "cmg", _request(cmg_lab, f"/ccm_proxy_SERVERAUTH/{role}/SMS_MP/.sms_aut?MPLIST"))
    assert status_of(reply) == 200, reply[:300]
    rec = next(r for r in records_after(cmg_lab, "cmg", before) if r["path"].lower().endswith(".sms_aut"))
    assert (
        rec["forwarded_url"] == f"https://{cmg_lab.config.hosts.cmg}/CCM_Proxy_ServerAuth/{role}/SMS_MP/.sms_aut?MPLIST"
    )
    assert rec["rewritten_url"] == f"{cmg_lab.url('management-point')}/SMS_MP/.sms_aut?MPLIST"


def test_lab_endpoints_on_the_internet_listener_need_the_admin_token(cmg_lab: Lab) -> None:
    with client(cmg_lab) as c:
        for path in ("/_lab/requests", "/_lab/faults", "/_lab/openapi.json"):
            assert c.get(f"{cmg_lab.url('cmg')}{path}").status_code == 401, path
            assert c.get(f"{cmg_lab.url('cmg')}{path}", headers={"Authorization": "Bearer x"}).status_code == 401
            assert c.get(f"{cmg_lab.url('cmg')}{path}", headers=admin(cmg_lab)).status_code == 200, path
        assert c.get(f"{cmg_lab.url('cmg')}/_lab/health").status_code == 200  # compose health checks


def test_the_connector_listeners_lab_endpoints_need_the_admin_token(cmg_lab: Lab) -> None:
    """The connector listener keeps only its connection points' and the lab admin's connections past the TLS
    handshake (a device's PKI certificate passes the TLS and is dropped there); /_lab needs the admin token too."""
    import httpx

    from cmglab.wire import httpclient

    port = cmg_lab.config.ports.cmg_connector
    url = f"https://{cmg_lab.config.hosts.cmg}:{port}/_lab/requests"
    resolve = [f"{cmg_lab.config.hosts.cmg}:{port}:127.0.0.1"]
    admin_cert = (cmg_lab.pki.lab_admin.cert_path, cmg_lab.pki.lab_admin.key_path)
    ctx = httpclient.ssl_context(ca_bundle=cmg_lab.pki.ca_bundle, client_cert=admin_cert)
    with httpclient.client(ctx=ctx, resolve=resolve, timeout=10) as c:
        assert c.get(url).status_code == 401
        assert c.get(url, headers=admin(cmg_lab)).status_code == 200
    device = cmg_lab.pki.issue_client(f"conn-{cmg_lab.port('cmg')}.corp.lab.test")
    ctx = httpclient.ssl_context(ca_bundle=cmg_lab.pki.ca_bundle, client_cert=(device.cert_path, device.key_path))
    with httpclient.client(ctx=ctx, resolve=resolve, timeout=10) as c, pytest.raises(httpx.TransportError):
        c.get(url, headers=admin(cmg_lab))  # even with the token: no answer, the connection is dropped


def test_troubleshooting_row_invalid_hostname_and_url(cmg_lab: Lab) -> None:
    """README's troubleshooting row "the CMG answers 400 InvalidHostname / InvalidUrl": the codes as the row names
    them, and its remedy (the CMG's own name, a plain path) gets the same request through to the site."""
    sts = f"/CCM_Proxy_ServerAuth/{cmg_lab.config.site.role_id}/CCM_STS"
    wrong_host = raw_https(cmg_lab, "cmg", _request(cmg_lab, sts, host="cmg.example.com", method="POST"))
    assert status_of(wrong_host) == 400 and b'"Error":"InvalidHostname"' in wrong_host, wrong_host[:400]
    ambiguous = raw_https(cmg_lab, "cmg", _request(cmg_lab, f"{sts}/%2e%2e/CCM_STS", method="POST"))
    assert status_of(ambiguous) == 400 and b'"Error":"InvalidUrl"' in ambiguous, ambiguous[:400]
    token, *_ = cmg_lab.site_signer().bulk_token()  # a token the CMG verifies and lets through to the site
    before = last_seq(cmg_lab, "management-point")
    with client(cmg_lab) as c:
        fixed = c.post(
            f"{cmg_lab.url('cmg')}{sts}",
            content=b'{"ProofType":"BulkRegistration"}',
            headers={"Authorization": f"Bearer {token}"},
        )
    assert fixed.status_code != 400, fixed.text
    # forwarded: the site answered it (whatever it made of the token)
    assert [r for r in records_after(cmg_lab, "management-point", before) if not _site_config_poll(r)], fixed.text
