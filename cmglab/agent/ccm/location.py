"""LocationServices: site information, content location and the internet MP list (MP_LocationManager)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cmglab.agent.ccm.client import CcmClient, host_line
from cmglab.agent.ccm.state import CAPABILITIES, ManagementPoint
from cmglab.wire.ccm_messaging import parse_xml


@dataclass
class ContentLocation:
    url: str
    dp_type: str  # CLOUD (content-enabled CMG), SERVER (distribution point) or MP
    signature: str = ""  # the DP's signature file URL (SMS_DP_SMSSIG$/<content>.<version>.tar)


def site_info(
    client: CcmClient,
    mp: ManagementPoint,
    site_code: str,
    log: logging.Logger,
    prefix: str = "ccmhttp",
    *,
    retry: bool = True,
    connected: Callable[[], None] | None = None,
) -> str:
    """`connected`: ccmsetup's order (seed 001 §4): its Host= line, "Created connection" (what `connected`
    logs), then the request."""
    body = f'<SiteInformationRequest SchemaVersion="1.00"><SiteCode Name="{site_code}"/></SiteInformationRequest>'
    if connected is not None:
        log.info(host_line(prefix, mp, mp.path(f"{client.vdir(mp)}/request"), mp.token_auth, "0x4100", "0xe0"))
        connected()
    log.info(f"Sending location request to '{mp.name}' with payload '{body}'")
    reply = client.send(
        mp,
        "MP_LocationManager",
        body,
        log=log,
        prefix=prefix,
        flags="0x4100",
        options="0xe0",
        retry=retry,
        announced=connected is not None,
    )
    log.info(f"Received message '{reply.body}'")
    return reply.body


def content_locations(
    client: CcmClient,
    mp: ManagementPoint,
    site_code: str,
    package_id: str,
    log: logging.Logger,
    prefix: str = "ccmhttp",
) -> list[ContentLocation]:
    internet = int(mp.internet)
    body = (
        f'<ContentLocationRequest SchemaVersion="1.00" BGRVersion="1"><AssignedSite SiteCode="{site_code}"/>'
        f'<ClientPackage RequestForLatest="0" DeploymentFlags="4098"/>'
        f'<ClientLocationInfo LocationType="SMSPACKAGE" DistributeOnDemand="0" UseAzure="{internet}" '
        f'AllowWUMU="0" UseProtected="0" AllowCaching="0" BranchDPFlags="0" UseInternetDP="{internet}" '
        f'AllowHTTP="1" AllowSMB="0" AllowMulticast="0" DPTokenAuth="{int(mp.token_auth)}">'
        f'<ADSite Name="Default-First-Site-Name"/><Forest Name=""/><Domain Name=""/>'
        f'<IPAddresses><IPAddress SubnetAddress="127.0.0.0" Address="127.0.0.1"/></IPAddresses>'
        f"</ClientLocationInfo></ContentLocationRequest>"
    )
    log.info(f"Sending message body '{body}'")
    reply = client.send(mp, "MP_LocationManager", body, log=log, prefix=prefix, flags="0x4100", options="0xe0")
    out = _records(reply.body)
    for loc in out:
        log.info(f"The location '{loc.url}' ({loc.dp_type}) was found for the client package {package_id}")
    return out


def _records(reply: str) -> list[ContentLocation]:
    out = []
    for rec in parse_xml(reply).iter("LocationRecord"):
        url = rec.find("URL")
        if url is not None and url.get("Name"):
            out.append(ContentLocation(url.get("Name", ""), rec.findtext("DPType") or "", url.get("Signature", "")))
    return out


def package_locations(
    client: CcmClient, mp: ManagementPoint, site_code: str, package_id: str, version: int, log: logging.Logger
) -> list[ContentLocation]:
    """Where a package's content is (ContentTransferManager's location request for a deployment)."""
    internet = int(mp.internet)
    body = (
        f'<ContentLocationRequest SchemaVersion="1.00" ExcludeFileList="" BGRVersion="1">'
        f'<Package ID="{package_id}" Version="{version}"/><AssignedSite SiteCode="{site_code}"/>'
        f'<ClientLocationInfo LocationType="SMSPackage" DistributeOnDemand="0" UseAzure="{internet}" '
        f'AllowWUMU="0" UseProtected="1" AllowCaching="0" BranchDPFlags="0" UseInternetDP="{internet}" '
        f'AllowHTTP="1" AllowSMB="0" AllowMulticast="0"><ADSite Name="Default-First-Site-Name"/>'
        f'<Forest Name=""/><Domain Name=""/><IPAddresses><IPAddress SubnetAddress="127.0.0.0" '
        f'Address="127.0.0.1"/></IPAddresses></ClientLocationInfo></ContentLocationRequest>'
    )
    log.info(f"Queued location request for {package_id}.{version}: '{body}'")
    reply = client.send(mp, "MP_LocationManager", body, log=log, prefix="ccmhttp", flags="0x4100", options="0xe0")
    out = _records(reply.body)
    for loc in out:
        log.info(f"Location update: '{loc.url}' ({loc.dp_type}) for {package_id}.{version}")
    return out


def rotate_internet_mp(client: CcmClient, logs: list[logging.Logger]) -> ManagementPoint | None:
    """Put the first internet MP (the CMG) in use, as LocationServices does when the client is on the
    internet (seed 004's line, in LocationServices.log and ClientLocation.log)."""
    mps = [ManagementPoint(**m) for m in client.state.internet_mps]
    if mps and not client.state.allow_cmg:  # seed 003: without the client setting, no CMG whatever the token
        for log in logs:
            log.warning(
                "The client setting 'Allow clients to use a cloud management gateway' is off: the client "
                "does not use the cloud management gateway on the internet"
            )
        return None
    if not mps:
        for log in logs:
            log.warning("There are no internet management points: the client cannot reach its site from the internet")
        return None
    mp = mps[0]
    for log in logs:
        log.info(
            f"Rotating internet management point, new management point [1] is: {mp.display_url} (0) "
            f"with capabilities: {CAPABILITIES}"
        )
    return mp
