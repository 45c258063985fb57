"""What a client URL means at the CMG, matched case-insensitively as IIS does.

- `/CCM_Proxy_MutualAuth/<roleId>/<path>` and `/CCM_Proxy_ServerAuth/<roleId>/<path>`: proxied to the
  site, if the site published `<path>` for that role ID (URL filtering; anything else is 404);
- `/CCM_Proxy_ServerAuth/AADAuthInfo`: the Entra details of an onboarded tenant;
- `/downloadrestservice.svc/getcontentxmlsecure` and `/downloadrestservice.svc/content/...`: the
  content-enabled CMG's cloud storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["MutualAuth", "ServerAuth"]
MUTUAL: Family = "MutualAuth"
SERVER: Family = "ServerAuth"

_PROXY = re.compile(r"^/ccm_proxy_(mutualauth|serverauth)/([^/]+)(?:/(.*))?$", re.IGNORECASE)
_CONTENT = re.compile(r"^/downloadrestservice\.svc/(getcontentxmlsecure|content/([^/]+)/([^/]+))$", re.IGNORECASE)


@dataclass(frozen=True)
class ProxyRoute:
    family: Family
    role_id: str
    rest: str  # the path after the role ID, case as sent (no leading slash)

    @property
    def endpoint(self) -> str:
        return self.rest.split("/", 1)[0]


@dataclass(frozen=True)
class AADAuthInfoRoute:
    pass


@dataclass(frozen=True)
class ContentXmlRoute:
    pass


@dataclass(frozen=True)
class ContentFileRoute:
    package_id: str
    filename: str


Route = ProxyRoute | AADAuthInfoRoute | ContentXmlRoute | ContentFileRoute


def parse(path: str) -> Route | None:
    m = _PROXY.match(path)
    if m:
        family: Family = MUTUAL if m.group(1).lower() == "mutualauth" else SERVER
        second, rest = m.group(2), m.group(3)
        if rest is None:
            if family == SERVER and second.lower() == "aadauthinfo":
                return AADAuthInfoRoute()
            return None
        if not rest or not second.isdigit():
            return None
        return ProxyRoute(family, second, rest)
    m = _CONTENT.match(path)
    if m:
        if m.group(1).lower() == "getcontentxmlsecure":
            return ContentXmlRoute()
        return ContentFileRoute(m.group(2), m.group(3))
    return None


def published(config: dict[str, Any] | None, route: ProxyRoute) -> str | None:
    """The published path that lets `route` through, or None (404 at the CMG). A published path
    matches the same path or anything below it, case-insensitively."""
    if not config or not config.get("allow_cmg", True):
        return None
    endpoint = (config.get("endpoints") or {}).get(route.role_id)
    if not endpoint:
        return None
    rest = route.rest.lower()
    for path in endpoint.get("paths") or []:
        p = str(path).strip("/").lower()
        if rest == p or rest.startswith(p + "/"):
            return str(path)
    return None


def stats_uri(path: str) -> str:
    """The URI as CMGService.log's per-URI summaries show it: upper case, no query."""
    return path.upper()
