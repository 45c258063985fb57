"""External CMG URL -> internal MP URL, from the role-ID table the site publishes (lab contract §3):

    https://<cmg>/CCM_Proxy_(MutualAuth|ServerAuth)/<roleId>/<path>?<q>  ->  <internal_url>/<path>?<q>
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_PROXY = re.compile(r"^(/ccm_proxy_(?:mutualauth|serverauth)/(\d+))/(.+)$", re.IGNORECASE)


class RewriteError(Exception):
    pass


@dataclass(frozen=True)
class Rewrite:
    external_url: str  # as the client sent it, query included
    replaced: str  # the external URL without the query: what gets replaced
    internal_base: str  # the MP URL the role ID maps to, plus the path
    internal_url: str  # internal_base plus the query
    role_id: str
    endpoint: str  # the first path segment (CCM_STS, ccm_system, CCM_Client, ...)

    def log_line(self) -> str:
        return (f"Switched to internal URL. Replaced '{self.replaced}' in   '{self.external_url}' with "
                f"'{self.internal_base}' and got '{self.internal_url}'")


def rewrite(external_url: str, config: dict[str, Any] | None) -> Rewrite:
    parts = urlsplit(external_url)
    m = _PROXY.match(parts.path)
    if not m:
        raise RewriteError(f"{parts.path} is not a CCM_Proxy URL")
    role_id, rest = m.group(2), m.group(3)
    endpoint = ((config or {}).get("endpoints") or {}).get(role_id)
    if not endpoint or not endpoint.get("internal_url"):
        raise RewriteError(f"role ID {role_id} is not in the site's published endpoint table")
    base = f"{str(endpoint['internal_url']).rstrip('/')}/{rest}"
    replaced = external_url.split("?", 1)[0]
    internal = base + (f"?{parts.query}" if parts.query else "")
    return Rewrite(external_url, replaced, base, internal, role_id, rest.split("/", 1)[0])
