"""The site's Communication Security settings as clients receive them: the `SecurityModeMaskEx` of the site
information (`SiteInfoReply/Site/SecurityConfiguration`, the value the site also publishes to AD).

Its bits are the site component manager's `IISSSLState`: 0x20 is "Clients check the certificate revocation list
(CRL) for site systems" (IISSSLState 192 is HTTPS or HTTP without it, 224 with it; 31 HTTPS only without it,
63 with it), 0x400 "Use Configuration Manager-generated certificates for HTTP site systems" (enhanced HTTP).

HTTPS or HTTP maps to MaskEx 1088/1120. For HTTPS only, the MaskEx 31/63 is the LAB'S CHOICE, not a documented
wire value: no public source we found gives SecurityModeMaskEx for an HTTPS-only site, so the lab reuses
IISSSLState's 31/63 (the CRL bit 0x20, the only bit the client reads, is right either way).
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

CHECK_CRL = 0x20
BASE_MASK_EX = 0x440  # HTTPS or HTTP with enhanced HTTP: the lab site's mask without the CRL bit (1088)
HTTPS_ONLY_MASK_EX = 0x1F  # HTTPS only, without the CRL bit: the lab's choice (IISSSLState 31), no public source


def security_mode_mask_ex(crl_check: bool, https_only: bool = False) -> int:
    """The mask of the site's Communication Security: HTTPS only 31 / 63 (with the CRL check), HTTPS or HTTP
    with enhanced HTTP 1088 / 1120."""
    return (HTTPS_ONLY_MASK_EX if https_only else BASE_MASK_EX) | (CHECK_CRL if crl_check else 0)


def site_checks_crl(site: Element) -> bool | None:
    """The CRL setting a SiteInfoReply's `<Site>` carries; None when it carries no mask."""
    text = site.findtext("SecurityConfiguration/SecurityModeMaskEx")
    if text is None or not text.strip().isdigit():
        return None
    return bool(int(text) & CHECK_CRL)
