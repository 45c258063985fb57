"""MP_LocationManager (anonymous): site information, content location, MP location.

Content location for a request that came through the CMG points at the content-enabled CMG
(`https://<cmg>/downloadrestservice.svc/getcontentxmlsecure?pid=<package>&cid=<package>`, seed 001)
first and at the MP's `CCM_Client` through the CMG second (the client package only: the cloud holds
nothing else). An internal request is in the intranet boundary group: the distribution point first
(`http://<dp>/SMS_DP_SMSPKG$/<content>`, its signature `SMS_DP_SMSSIG$/<content>.<version>.tar`,
DPType SERVER), then, for the client package, the MP's `CCM_Client` URL.
"""

from __future__ import annotations

import functools
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape, quoteattr

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmglab.core.labconfig import DistributionPoint, load_config
from cmglab.runtime.contentlib import ContentLibrary
from cmglab.services.management_point.caller import Caller
from cmglab.services.management_point.parts import Parts
from cmglab.wire.ccm_messaging import CcmMessage, CcmMessageError, parse_xml
from cmglab.wire.site_security import security_mode_mask_ex


def handle(mp: Parts, msg: CcmMessage, caller: Caller) -> str:
    root = parse_xml(msg.body)
    handlers = {
        "SiteInformationRequest": site_information,
        "ContentLocationRequest": content_location,
        "LocalMPLocationRequest": mp_location,
        "EnumerateMPLocationRequest": mp_location,
        "MPLocationRequest": mp_location,
        "AssignedSiteRequest": assigned_site,
    }
    handler = handlers.get(root.tag)
    if handler is None:
        raise CcmMessageError(f"MP_LocationManager cannot process <{root.tag}>")
    return handler(mp, root, caller)


def _site_code_of(root: Element) -> str | None:
    for path in ("SiteCode", "AssignedSite"):
        el = root.find(path)
        if el is not None:
            return el.get("Name") or el.get("SiteCode")
    return None


def site_information(mp: Parts, root: Element, caller: Caller) -> str:
    site = mp.lab.config.site
    asked = _site_code_of(root)
    log = mp.logs.location
    if asked and asked.upper() != site.code.upper():
        log.warning(f"SiteInformationRequest for unknown site {asked}")
        return '<SiteInfoReply SchemaVersion="1.00"/>'
    cert_hex = _cert_hex(mp.site_cert())
    mp_ports = mp.lab.config.ports
    http_port = 80 if mp.lab.config.compose else mp_ports.management_point_http
    https_port = 443 if mp.lab.config.compose else mp_ports.management_point
    # the site's "Clients check the CRL for site systems", live: clients take it from this reply
    settings = mp.store.site_settings()
    mask_ex = security_mode_mask_ex(settings.client_crl_check, settings.https_only)
    log.info(
        f"Site information requested for {site.code} ({caller.auth_kind}, "
        f"{'internet' if caller.internet else 'intranet'})"
    )
    return (
        f'<SiteInfoReply SchemaVersion="1.00"><Site><SiteCode>{site.code}</SiteCode>'
        f"<SiteName>{escape(site.name)}</SiteName><Version>{site.client_version}</Version>"
        f"<BuildNumber>{site.mp_build}</BuildNumber><HierarchyID>{site.hierarchy_id}</HierarchyID>"
        f"<DefaultMP>{mp.fqdn}</DefaultMP>"
        f"<SecurityConfiguration><SecurityModeMask>0</SecurityModeMask><SecurityModeMaskEx>{mask_ex}</SecurityModeMaskEx>"
        f"<HTTPPort>{http_port}</HTTPPort><HTTPSPort>{https_port}</HTTPSPort>"
        f"<CertificateSelectionCriteria></CertificateSelectionCriteria><CertificateStoreName></CertificateStoreName>"
        f"<CertificateSelectFirstFlag>1</CertificateSelectFirstFlag>"
        f"<SiteSigningCert>{cert_hex}</SiteSigningCert></SecurityConfiguration>"
        f'<Capabilities SchemaVersion="1.0"><Property Name="SSLState" Value="63"/>'
        f'<Property Name="TokenAuth" Value="1"/></Capabilities>'
        f"<Forest>{escape(mp.lab.config.active_directory.dns_name)}</Forest>"
        f"<OnInternet>{int(caller.internet)}</OnInternet><InternetName>{cmg_authority(mp)}</InternetName>"
        f"<IntranetName>{mp.fqdn}</IntranetName></Site></SiteInfoReply>"
    )


@functools.lru_cache(maxsize=4)
def _cert_hex(cert: x509.Certificate) -> str:
    """The site signing certificate as SiteSigningCert carries it (hex DER, upper case): once per certificate."""
    return cert.public_bytes(Encoding.DER).hex().upper()


def cmg_base(mp: Parts) -> str:
    return mp.lab.url("cmg")


def cmg_authority(mp: Parts) -> str:
    """The CMG as clients name it in CCMHOSTNAME and MP lists: host[:port] (the port when not 443)."""
    return cmg_base(mp).removeprefix("https://")


def content_location(mp: Parts, root: Element, caller: Caller) -> str:
    site = mp.lab.config.site
    log = mp.logs.location
    package = root.find("Package")
    client_pkg = root.find("ClientPackage")
    package_id = (package.get("ID") if package is not None else None) or site.client_package_id
    version = package.get("Version", "1") if package is not None else "1"
    distributed = ContentLibrary(mp.lab.content_dir, mp.lab.config).find(package_id)
    if client_pkg is None and distributed is None:
        log.warning(f"Content location request for unknown package {package_id}")
        return '<ContentLocationReply SchemaVersion="1.00"><Sites/></ContentLocationReply>'
    is_client = distributed is None or distributed.package_id == site.client_package_id
    records = []
    if caller.internet:
        # the cloud holds the client package only (content-enabled CMG); other content stays on the intranet DP
        if is_client:
            base = cmg_base(mp)
            if mp.store.site_settings().content_enabled_cmg:
                url = f"{base}/downloadrestservice.svc/getcontentxmlsecure?pid={package_id}&cid={package_id}"
                records.append(_record(url, mp.lab.config.hosts.cmg, "CLOUD", 1))
            prefix = "CCM_Proxy_MutualAuth" if caller.pki_cert is not None else "CCM_Proxy_ServerAuth"
            records.append(_record(f"{base}/{prefix}/{site.role_id}/CCM_Client", mp.lab.config.hosts.cmg, "MP", 1))
    else:
        # the intranet boundary (the lab's internal network) has the distribution point: it comes first
        if distributed is not None:
            dp_https = _dp_settings(mp).https
            base = mp.lab.url("distribution-point") if dp_https else _dp_http_url(mp)
            dp_host = mp.lab.config.hosts.distribution_point
            records.append(
                _record(
                    f"{base}/SMS_DP_SMSPKG$/{distributed.content_id}",
                    dp_host,
                    "SERVER",
                    63 if dp_https else 0,
                    signature=f"{base}/SMS_DP_SMSSIG$/{distributed.content_version}.tar",
                )
            )
        if is_client:
            scheme = caller.scheme
            base = mp.lab.url("management-point") if scheme == "https" else _mp_http_url(mp)
            records.append(_record(f"{base}/CCM_Client", mp.fqdn, "MP", int(scheme == "https") * 63))
    log.info(
        f"Content location request for {package_id} ({'internet' if caller.internet else 'intranet'}): "
        + (", ".join(r[0] for r in records) or "no location")
    )
    body = "".join(r[1] for r in records)
    boundary = (
        ""
        if caller.internet
        else (
            '<BoundaryGroups BoundaryGroupListRetrieveTime="2026-01-01T00:00:00.000" IsOnVPN="0">'
            '<BoundaryGroup GroupID="1" GroupGUID="2B1B6FFE-3C2E-4B5B-9E55-4C1A6B7D0001" GroupFlag="0"/>'
            "</BoundaryGroups>"
        )
    )
    return (
        f'<ContentLocationReply SchemaVersion="1.00" BGRVersion="1">{boundary}<ContentInfo PackageFlags="0" '
        f"PackageID={quoteattr(package_id)} Version={quoteattr(version)}><ContentHashValues/></ContentInfo>"
        f"<Sites><Site>"
        f'<MPSite SiteCode="{site.code}" MasterSiteCode="{site.code}" SiteLocality="LOCAL" IISPreferedPort="80" '
        f'IISSSLPreferedPort="443"/><LocationRecords>{body}</LocationRecords></Site></Sites>'
        f"<RelatedContentIDs/></ContentLocationReply>"
    )


def _dp_settings(mp: Parts) -> DistributionPoint:
    """The DP's properties as lab.json has them now (`cmglab content dp` changes them on a running lab)."""
    try:
        return load_config(mp.lab.config_path(mp.lab.dir)).distribution_point
    except (OSError, ValueError):
        return mp.lab.config.distribution_point


def _dp_http_url(mp: Parts) -> str:
    port = 80 if mp.lab.config.compose else mp.lab.config.ports.distribution_point_http
    return f"http://{mp.lab.config.hosts.distribution_point}" + ("" if port == 80 else f":{port}")


def _mp_http_url(mp: Parts) -> str:
    port = 80 if mp.lab.config.compose else mp.lab.config.ports.management_point_http
    return f"http://{mp.fqdn}" + ("" if port == 80 else f":{port}")


def _record(url: str, server: str, dp_type: str, ssl_state: int, *, signature: str | None = None) -> tuple[str, str]:
    xml = (
        f"<LocationRecord><URL Name={quoteattr(url)} Signature={quoteattr(signature or url)}/>"
        f'<ADSite Name="Default-First-Site-Name"/><IPSubnets><IPSubnet Address=""/></IPSubnets>'
        f'<Metric Value=""/><Version>8968</Version><Capabilities SchemaVersion="1.0">'
        f'<Property Name="SSLState" Value="{ssl_state}"/></Capabilities>'
        f"<ServerRemoteName>{escape(server)}</ServerRemoteName><DPType>{dp_type}</DPType>"
        f'<Windows Trust="1"/><Locality>{"INTERNET" if dp_type == "CLOUD" else "LOCAL"}</Locality>'
        f"</LocationRecord>"
    )
    return url, xml


def mp_location(mp: Parts, root: Element, caller: Caller) -> str:
    site = mp.lab.config.site
    mps = []
    if caller.internet:
        prefix = "CCM_Proxy_MutualAuth"
        mps.append((f"{cmg_authority(mp)}/{prefix}/{site.role_id}", "1"))
    mps.append((mp.fqdn, "0"))
    mp.logs.location.info(f"MP location request ({root.tag}): {', '.join(m[0] for m in mps)}")
    records = "".join(
        f'<LocationRecord MPBGRFallbackType="None" MPFallbackTime="0"><Name>{escape(name.split("/")[0])}</Name>'
        f"<FQDN>{escape(name)}</FQDN><SiteCode>{site.code}</SiteCode><Version>{site.mp_build}</Version>"
        f'<Capabilities SchemaVersion="1.0"><Property Name="SSL" Version="1"/></Capabilities>'
        f"<Internet>{internet}</Internet></LocationRecord>"
        for name, internet in mps
    )
    return (
        f'<MPLocationReply SchemaVersion="1.00"><Sites><Site><MPSite SiteCode="{site.code}" '
        f'MasterSiteCode="{site.code}" SiteLocality="LOCAL"/><LocationRecords>{records}</LocationRecords>'
        f"</Site></Sites></MPLocationReply>"
    )


def assigned_site(mp: Parts, root: Element, caller: Caller) -> str:
    code = mp.lab.config.site.code
    mp.logs.location.info(f"Assigned site request: {code}")
    return f'<AssignedSiteReply SchemaVersion="1.00"><SITECODE>{code}</SITECODE></AssignedSiteReply>'
