"""What a client URL means at the CMG, matched case-insensitively as IIS does.

- `/CCM_Proxy_MutualAuth/<roleId>/<path>` and `/CCM_Proxy_ServerAuth/<roleId>/<path>`: proxied to the
  site, if the site published `<path>` for that role ID (URL filtering; anything else is 404);
- `/CCM_Proxy_ServerAuth/AADAuthInfo`: the Entra details of an onboarded tenant;
- `/downloadrestservice.svc/getcontentxmlsecure` and `/downloadrestservice.svc/content/...`: the
  content-enabled CMG's cloud storage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cmglab.wire import cmg_urls
from cmglab.wire.cloud_config import CloudConfig
from cmglab.wire.cmg_urls import ProxyTarget as ProxyRoute
from cmglab.wire.cmg_urls import UrlRefused

__all__ = [
    "AADAuthInfoRoute",
    "ContentFileRoute",
    "ContentXmlRoute",
    "ProxyRoute",
    "Route",
    "UrlRefused",
    "parse",
    "published",
    "read",
    "stats_uri",
]

MUTUAL, SERVER = "MutualAuth", "ServerAuth"
# A client asks for the same few URLs again and again: the route of a target up to this long (path and query) is
# remembered among the latest ROUTES read; a longer one is read each time, and a refused one is never remembered.
REMEMBERED_TARGET = 512
ROUTES = 1024


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


def parse(raw_path: str, query: str = "") -> Route | None:
    """`read`, remembered for a short target (every route is immutable)."""
    if len(raw_path) + len(query) <= REMEMBERED_TARGET:
        return _remembered(raw_path, query)
    return read(raw_path, query)


def read(raw_path: str, query: str = "") -> Route | None:
    """The route of a request target as the client sent it (raw, percent-encoded): every route is read from
    the same validated segments that a proxied request is later rebuilt from. UrlRefused: a target that
    could be read two ways (cmglab/wire/cmg_urls.py)."""
    parts = cmg_urls.segments(raw_path)
    lower = [p.lower() for p in parts]
    if lower[0].startswith("ccm_proxy_"):
        if lower == ["ccm_proxy_serverauth", "aadauthinfo"]:
            return AADAuthInfoRoute()
        return cmg_urls.proxy_target(raw_path, query)
    if lower[0] == "downloadrestservice.svc":
        if lower[1:] == ["getcontentxmlsecure"]:
            return ContentXmlRoute()
        if len(parts) == 4 and lower[1] == "content":
            return ContentFileRoute(parts[2], parts[3])
    return None


_remembered = functools.lru_cache(maxsize=ROUTES)(read)


def published(config: CloudConfig | None, route: ProxyRoute) -> str | None:
    """The published path that lets `route` through, or None (404 at the CMG)."""
    return cmg_urls.published(config, route.role_id, route.rest)


def stats_uri(path: str) -> str:
    """The URI as CMGService.log's per-URI summaries show it: upper case, no query."""
    return path.upper()
