"""MP_LocationManager, `/CCM_Cloud/config` and `/CCM_Client`: what ccmsetup and the CMG ask for."""

from __future__ import annotations

import hashlib

from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from cmglab.wire.cabinet import read_cab
from tests.support.lab import lab_fixture
from tests.support.mp import Device, ccm_post, client, http_url, https_url, reply_body, set_site, wait_log

SITE_INFO = '<SiteInformationRequest SchemaVersion="1.00"><SiteCode Name="MEM"/></SiteInformationRequest>'
CLIENT_CONTENT = (
    '<ContentLocationRequest SchemaVersion="1.00" BGRVersion="1"><AssignedSite SiteCode="MEM"/>'
    '<ClientPackage RequestForLatest="0" DeploymentFlags="4098"/><ClientLocationInfo '
    'LocationType="SMSPACKAGE" DistributeOnDemand="0" UseAzure="1" AllowWUMU="0" UseProtected="0" '
    'AllowCaching="0" BranchDPFlags="0" UseInternetDP="1" AllowHTTP="1" AllowSMB="0" '
    'AllowMulticast="0" DPTokenAuth="1"><ADSite Name="Default-First-Site-Name"/>'
    '<Forest Name="lab.test"/><Domain Name="lab.test"/><IPAddresses><IPAddress '
    'SubnetAddress="10.0.0.0" Address="10.0.0.5"/></IPAddresses></ClientLocationInfo>'
    "</ContentLocationRequest>"
)


mp = lab_fixture("management-point")


def location(mp: Lab, body: str, url: str | None = None, cert: object = None, headers: dict | None = None) -> str:
    device = Device("LOC01")
    raw = cm.encode_request(device.header("MP_LocationManager", target_address="mp:[http]MP_LocationManager"), body)
    with client(mp, cert=cert) as c:  # type: ignore[arg-type]
        return reply_body(ccm_post(c, url or f"{http_url(mp)}/ccm_system/request", raw, headers))


def test_site_information(mp: Lab) -> None:
    reply = location(mp, SITE_INFO)
    assert reply.startswith('<SiteInfoReply SchemaVersion="1.00">')  # ccmsetup.log: Received message '<SiteInfoReply
    root = cm.parse_xml(reply)
    assert root.findtext("Site/SiteCode") == "MEM"
    assert root.findtext("Site/Version") == mp.config.site.client_version
    assert root.findtext("Site/BuildNumber") == str(mp.config.site.mp_build)
    wait_log(mp, "MP_Location.log", r"Site information requested for MEM")


def test_internal_content_location_points_at_the_dp_then_the_mp(mp: Lab) -> None:
    root = cm.parse_xml(location(mp, CLIENT_CONTENT))
    urls = [u.get("Name") for u in root.iter("URL")]
    dp = f"http://{mp.config.hosts.distribution_point}:{mp.config.ports.distribution_point_http}"
    assert urls == [f"{dp}/SMS_DP_SMSPKG$/MEM00001", f"{http_url(mp)}/CCM_Client"]
    assert next(u.get("Signature") for u in root.iter("URL")) == f"{dp}/SMS_DP_SMSSIG$/MEM00001.1.tar"
    assert [r.findtext("DPType") for r in root.iter("LocationRecord")] == ["SERVER", "MP"]
    assert root.find("BoundaryGroups/BoundaryGroup") is not None  # the intranet boundary group


def test_content_location_through_the_cmg(mp: Lab) -> None:
    cp = mp.pki.connection_point
    token, _ = mp.site_signer().ccm_token(token_type="Device")
    root = cm.parse_xml(
        location(
            mp,
            CLIENT_CONTENT,
            f"{https_url(mp)}/ccm_system_tokenauth/request",
            (cp.cert_path, cp.key_path),
            {"Authorization": f"Bearer {token}"},
        )
    )
    urls = [u.get("Name") or "" for u in root.iter("URL")]
    cmg = mp.url("cmg")
    pid = mp.config.site.client_package_id
    assert urls[0] == f"{cmg}/downloadrestservice.svc/getcontentxmlsecure?pid={pid}&cid={pid}"
    assert urls[1] == f"{cmg}/CCM_Proxy_ServerAuth/{mp.config.site.role_id}/CCM_Client"
    set_site(mp, content_enabled_cmg=False)
    try:
        root = cm.parse_xml(
            location(
                mp,
                CLIENT_CONTENT,
                f"{https_url(mp)}/ccm_system_tokenauth/request",
                (cp.cert_path, cp.key_path),
                {"Authorization": f"Bearer {token}"},
            )
        )
        assert [u.get("Name") for u in root.iter("URL")] == urls[1:]
    finally:
        set_site(mp, content_enabled_cmg=True)


def test_mp_location(mp: Lab) -> None:
    root = cm.parse_xml(location(mp, '<LocalMPLocationRequest SchemaVersion="1.00"/>'))
    assert root.tag == "MPLocationReply"
    assert [r.findtext("FQDN") for r in root.iter("LocationRecord")] == [mp.config.hosts.management_point]


def test_cloud_config_only_for_the_connection_point(mp: Lab) -> None:
    with client(mp) as c:
        assert c.get(f"{https_url(mp)}/CCM_Cloud/config").status_code == 403
    ident = mp.pki.issue_client("not-a-cp")
    with client(mp, cert=(ident.cert_path, ident.key_path)) as c:
        assert c.get(f"{https_url(mp)}/CCM_Cloud/config").status_code == 403
    cp = mp.pki.connection_point
    with client(mp, cert=(cp.cert_path, cp.key_path)) as c:
        doc = c.get(f"{https_url(mp)}/CCM_Cloud/config").json()
        site = mp.config.site
        assert doc["site_code"] == site.code and doc["allow_cmg"] is True
        ep = doc["endpoints"][str(site.role_id)]
        assert ep["internal_url"] == mp.url("management-point")
        assert {"CCM_STS", "ccm_system_tokenauth/request", "CCM_Client", "SMS_MP"} <= set(ep["paths"])
        onboarded = [t for t in mp.config.tenants if t.onboarded]
        assert [t["tenant_id"] for t in doc["tenants"]] == [t.tenant_id for t in onboarded]
        assert doc["tenants"][0]["resource_uri"] == "https://ConfigMgrService"
        assert doc["tenants"][0]["client_app_id"] == mp.config.apps[0].app_id
        assert doc["content"]["package_id"] == site.client_package_id
        set_site(mp, allow_cmg=False)
        try:
            off = c.get(f"{https_url(mp)}/CCM_Cloud/config").json()
            assert off["allow_cmg"] is False and off["endpoints"] == {}
        finally:
            set_site(mp, allow_cmg=True)


def test_client_package(mp: Lab) -> None:
    with client(mp) as c:
        manifest = c.get(f"{http_url(mp)}/CCM_Client/manifest.json").json()
        assert manifest["client_version"] == "5.00.8968.1000"
        assert manifest["product_code"] == "{66653948-0717-4D50-B0B9-ED66FDED2DDB}"
        for entry in manifest["files"]:
            blob = c.get(f"{http_url(mp)}/CCM_Client/{entry['name']}").content
            assert len(blob) == entry["size"] and hashlib.sha256(blob).hexdigest().upper() == entry["sha256"]
        cab = c.get(f"{http_url(mp)}/ccm_client/CCMSETUP.CAB").content
        assert cab[:4] == b"MSCF" and b"client.msi" in read_cab(cab)["ccmsetup.xml"]
        assert c.head(f"{http_url(mp)}/CCM_Client/ccmsetup.cab").status_code == 200
        assert c.get(f"{http_url(mp)}/CCM_Client/../lab.json").status_code == 404
        assert (
            c.get(
                f"{http_url(mp)}/CCM_Client/ccmsetup.cab", headers={"Authorization": "Bearer not-a-token"}
            ).status_code
            == 401
        )
    # through the connection point (internet client) a CCM token is required
    cp = mp.pki.connection_point
    token, _ = mp.site_signer().ccm_token(token_type="Device")
    with client(mp, cert=(cp.cert_path, cp.key_path)) as c:
        assert c.get(f"{https_url(mp)}/CCM_Client/ccmsetup.cab").status_code == 401
        ok = c.get(f"{https_url(mp)}/CCM_Client/ccmsetup.cab", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.content[:4] == b"MSCF"
