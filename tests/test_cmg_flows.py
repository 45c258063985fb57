"""Client -> CMG -> channel -> connection point -> the real MP and back (docs/protocol-notes.md, Lab §2 flows 2, 3, 7):
CCM_STS, a ccm_system_tokenauth location request, a ccm_system registration, the client package,
AADAuthInfo. Services run as subprocesses in a lab of their own (short heartbeat and summary interval)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from xml.etree import ElementTree

import httpx
import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from cmglab.wire import ccm_messaging as cm
from tests.support.agent import run
from tests.support.cmg import (
    FAST_ENV,
    channel_up,
    cmg_health,
    cmg_points,
    cmg_requests,
    cp_requests,
    log_text,
    mp_requests,
    new_bulk_token,
    proxy_url,
    wait_for,
)
from tests.support.lab import lab_client, new_lab
from tests.support.mp import Device, ccm_post, reply_body


# not lab_fixture: a lab of its own, its services with a short heartbeat and summary interval (FAST_ENV)
@pytest.fixture(scope="module")
def flow_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("cmgflow") / "lab")


@pytest.fixture(scope="module")
def services(flow_lab: Lab) -> Iterator[LabProcesses]:
    with LabProcesses(flow_lab, env=dict(FAST_ENV, CMGLAB_UPSTREAM_TIMEOUT="20")) as p:  # stopped on every way out
        p.ensure("management-point", "cmg", "cmg-connection-point")
        wait_for(lambda: channel_up(flow_lab) and cmg_points(flow_lab), what="channel up")
        wait_for(lambda: cmg_health(flow_lab)["site_config"], what="site configuration at the CMG")
        yield p


@pytest.fixture(scope="module")
def device() -> Device:
    return Device(name="CMGDEV01")


@pytest.fixture(scope="module")
def ccm_token(flow_lab: Lab, services: LabProcesses, device: Device) -> str:
    """CCM_STS through CCM_Proxy_ServerAuth with a bulk registration token (flow 5)."""
    bulk = new_bulk_token(flow_lab)
    body = json.dumps(device.proof("BulkRegistration", bulk)).encode()
    with lab_client(flow_lab) as c:
        r = c.post(
            proxy_url(flow_lab, "CCM_STS"),
            content=body,
            headers={"Authorization": f"Bearer {bulk}", "Content-Type": "application/json"},
        )
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["TokenType"] == "Device" and reply["Token"].count(".") == 2
    # byte-identical both ways: what the MP got and sent is what the client sent and got
    mp = mp_requests(flow_lab, "CCM_STS")[0]
    assert mp["request_bytes"] == len(body) and mp["response_bytes"] == len(r.content)
    assert mp["client_cert_subject"].startswith("CN=cmgcp.corp.lab.test")  # the point called the MP
    cmg = cmg_requests(flow_lab, "CCM_STS")[0]
    assert cmg["auth_kind"] == "BulkRegistrationToken" and cmg["status"] == 200
    assert cmg["rewritten_url"] == f"{flow_lab.url('management-point')}/CCM_STS"
    assert cmg["request_bytes"] == len(body) and cmg["response_bytes"] == len(r.content)
    return str(reply["Token"])


def test_ccm_sts_through_the_cmg(flow_lab: Lab, ccm_token: str) -> None:
    claims = flow_lab.site_signer()  # the token verifies against the site's signing certificate
    from cmglab.wire import site_tokens

    verified = site_tokens.verify(
        ccm_token, cert=claims.cert, hierarchy_id=flow_lab.config.site.hierarchy_id, types=site_tokens.CCM_TYPES
    )
    assert verified["Type"] == "Device"
    cp = next(r for r in cp_requests(flow_lab) if r["path"].endswith("/CCM_STS"))
    assert cp["rewritten_url"] == f"{flow_lab.url('management-point')}/CCM_STS" and cp["status"] == 200


def test_location_request_over_tokenauth(flow_lab: Lab, ccm_token: str, device: Device) -> None:
    body = '<SiteInformationRequest SchemaVersion="1.00"><SiteCode Name="MEM"/></SiteInformationRequest>'
    raw = cm.encode_request(device.header("MP_LocationManager"), body)
    with lab_client(flow_lab) as c:
        r = ccm_post(
            c, proxy_url(flow_lab, "ccm_system_tokenauth/request"), raw, {"Authorization": f"Bearer {ccm_token}"}
        )
        reply = reply_body(r)
    assert reply.startswith('<SiteInfoReply SchemaVersion="1.00">')
    assert "<OnInternet>1</OnInternet>" in reply
    mp = mp_requests(flow_lab, "ccm_system_tokenauth")[0]
    assert mp["method"] == "CCM_POST" and mp["status"] == 200
    assert mp["request_bytes"] == len(raw) and mp["response_bytes"] == len(r.content)
    cmg = cmg_requests(flow_lab, "ccm_system_tokenauth")[0]
    assert cmg["auth_kind"] == "CCMToken"
    assert cmg["rewritten_url"] == f"{flow_lab.url('management-point')}/ccm_system_tokenauth/request"


def test_pki_registration_over_mutual_auth(flow_lab: Lab, services: LabProcesses) -> None:
    dev = Device(name="PKIDEV01")
    pki = flow_lab.pki.issue_client(f"{dev.name.lower()}.corp.lab.test")
    raw = dev.registration_message()
    with lab_client(flow_lab, cert=(pki.cert_path, pki.key_path)) as c:
        r = ccm_post(c, proxy_url(flow_lab, "ccm_system/request", "MutualAuth"), raw)
        reply = reply_body(r)
    root = ElementTree.fromstring(reply)
    assert re.fullmatch(r"GUID:[0-9A-F-]{36}", root.get("SMSID", "")), reply
    mp = mp_requests(flow_lab, "ccm_system/request")[0]
    assert mp["request_bytes"] == len(raw) and mp["response_bytes"] == len(r.content)
    assert mp.get("auth_subject", "").startswith(f"CN={dev.name.lower()}.corp.lab.test")  # via Client-Cert
    cmg = cmg_requests(flow_lab, "ccm_system/request")[0]
    assert cmg["auth_kind"] == "MutualAuth" and f"CN={dev.name.lower()}" in cmg["auth_subject"]


def test_client_package_through_the_cmg(flow_lab: Lab, ccm_token: str) -> None:
    pkg = flow_lab.config.site.client_package_id
    folder = flow_lab.content_dir / pkg
    wait_for(lambda: (folder / "ccmsetup.cab").exists(), what="client package distributed by the MP")
    with lab_client(flow_lab) as c:
        # from the MP through the CMG (CCM_Client) ...
        r = c.get(proxy_url(flow_lab, "CCM_Client/ccmsetup.cab"), headers={"Authorization": f"Bearer {ccm_token}"})
        assert r.status_code == 200 and r.content == (folder / "ccmsetup.cab").read_bytes()
        # ... and from the content-enabled CMG's storage
        url = f"{flow_lab.url('cmg')}/downloadrestservice.svc/getcontentxmlsecure?pid={pkg}&cid={pkg}"
        assert c.get(url).status_code == 401
        r = c.get(url, headers={"Authorization": f"Bearer {ccm_token}"})
        assert r.status_code == 200, r.text
        root = ElementTree.fromstring(r.content)
        assert root.tag == "ContentInfo" and root.get("PackageID") == pkg
        files = {f.get("Name"): f for f in root.findall("File")}
        assert {"ccmsetup.cab", "client.msi", "manifest.json"} <= set(files)
        for name in ("ccmsetup.cab", "client.msi"):
            data = c.get(files[name].get("URL", "")).content  # a signed URL: no token needed
            assert data == (folder / name).read_bytes()
            assert int(files[name].get("Size", "0")) == len(data)
        # a range of a file (FileResponse's own answer) beside the whole file (from the CMG's memory)
        part = c.get(files["ccmsetup.cab"].get("URL", ""), headers={"Range": "bytes=0-3"})
        assert part.status_code == 206 and part.content == (folder / "ccmsetup.cab").read_bytes()[:4]
        tampered = files["client.msi"].get("URL", "").replace("sig=", "sig=0")
        assert c.get(tampered).status_code == 401


CONTENT_LOCATION = (
    '<ContentLocationRequest SchemaVersion="1.00" BGRVersion="1"><AssignedSite SiteCode="MEM"/>'
    '<ClientPackage RequestForLatest="0" DeploymentFlags="4098"/><ClientLocationInfo LocationType="SMSPACKAGE" '
    'UseAzure="1" UseInternetDP="1" AllowHTTP="1" DPTokenAuth="1"/></ContentLocationRequest>'
)


def test_content_enabled_cmg_follows_the_site_setting_live(
    flow_lab: Lab, ccm_token: str, device: Device, services: LabProcesses
) -> None:
    """`cmglab site set content-enabled-cmg false` on the running lab: the CMG refuses its content (it takes
    the setting with the connection point's next heartbeat) and content location through the CMG drops the
    cloud record; `true` serves it again. No restart."""
    pkg = flow_lab.config.site.client_package_id
    wait_for(lambda: (flow_lab.content_dir / pkg / "ccmsetup.cab").exists(), what="client package distributed")
    xml_url = f"{flow_lab.url('cmg')}/downloadrestservice.svc/getcontentxmlsecure?pid={pkg}&cid={pkg}"
    bearer = {"Authorization": f"Bearer {ccm_token}"}

    def content_xml() -> httpx.Response:
        with lab_client(flow_lab) as c:
            return c.get(xml_url, headers=bearer)

    def cloud_records() -> list[str]:
        raw = cm.encode_request(device.header("MP_LocationManager"), CONTENT_LOCATION)
        with lab_client(flow_lab) as c:
            reply = reply_body(ccm_post(c, proxy_url(flow_lab, "ccm_system_tokenauth/request"), raw, bearer))
        return [
            u.get("Name") or ""
            for u in ElementTree.fromstring(reply).iter("URL")
            if "downloadrestservice" in (u.get("Name") or "")
        ]

    def site_set(value: str) -> None:
        r = run("cmglab", "site", "set", "content-enabled-cmg", value, "--lab", str(flow_lab.dir))
        assert r.returncode == 0, r.stdout + r.stderr

    cmg_pid = services.procs["cmg"].proc.pid
    served = content_xml()
    assert served.status_code == 200, served.text
    file_url = ElementTree.fromstring(served.content).findall("File")[0].get("URL", "")
    assert cloud_records()
    site_set("false")
    try:
        refused = wait_for(lambda: (r := content_xml()).status_code == 404 and r, what="the CMG to refuse content")
        assert refused.json()["Error"] == "ContentNotEnabled"
        with lab_client(flow_lab) as c:
            assert c.get(file_url).status_code == 404  # a signed URL handed out before: refused too
        assert cloud_records() == []  # the MP drops the CMG from content location at once
        assert "content: disabled" in log_text(flow_lab, "cmg", "CMGService.log")
    finally:
        site_set("true")
    wait_for(lambda: content_xml().status_code == 200, what="the CMG to serve content again")
    assert cloud_records()
    assert services.procs["cmg"].proc.pid == cmg_pid and services.procs["cmg"].alive()  # no restart


def test_aad_auth_info(flow_lab: Lab, services: LabProcesses) -> None:
    onboarded = flow_lab.config.primary_tenant
    other = next(t for t in flow_lab.config.tenants if not t.onboarded)
    with lab_client(flow_lab) as c:
        r = c.get(f"{flow_lab.url('cmg')}/CCM_Proxy_ServerAuth/AADAuthInfo?TenantID={onboarded.tenant_id}")
        assert r.status_code == 200
        assert r.json() == {
            "AADTENANTID": onboarded.tenant_id,
            "AADCLIENTAPPID": "0b7c8ab3-9ea1-4ffa-b2b9-8ffdd944bd8b",
            "AADRESOURCEURI": "https://ConfigMgrService",
            "AADAUTHORITY": f"https://login.microsoftonline.com/{onboarded.tenant_id}",
        }
        r = c.get(f"{flow_lab.url('cmg')}/ccm_proxy_serverauth/aadauthinfo?tenantid={other.tenant_id}")
        assert r.status_code == 404
        assert r.json()["Error"] == "TenantNotOnboarded" and other.tenant_id in r.json()["Reason"]


def test_flow_logs(flow_lab: Lab, ccm_token: str) -> None:
    role = flow_lab.config.site.role_id
    cp_log = log_text(flow_lab, "cmg-connection-point", "SMS_CLOUD_PROXYCONNECTOR.log")
    assert re.search(
        rf"Switched to internal URL\. Replaced 'https://\S+/CCM_Proxy_ServerAuth/{role}/CCM_STS' in\s+"
        rf"'\S+' with 'https://{flow_lab.config.hosts.management_point}\S*/CCM_STS' and got '",
        cp_log,
    )
    assert re.search(
        r"MessageID: [0-9a-f-]{36} RequestURI: https://\S+/CCM_STS EndpointName: CCM_STS "
        r"ResponseHeader: HTTP/1\.1 200 OK.*ElapsedTime: \d+ ms",
        cp_log,
    )
    pattern = (
        rf"RequestUri: /CCM_PROXY_SERVERAUTH/{role}/CCM_STS\s+RequestCount: \d+\s+RequestSize: \d+ Bytes\s+"
        r"ResponseCount: \d+\s+ResponseSize: \d+ Bytes\s+AverageElapsedTime: \d+ ms"
    )
    wait_for(lambda: re.search(pattern, log_text(flow_lab, "cmg", "CMGService.log")), what="CMGService summary")
