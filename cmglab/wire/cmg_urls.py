"""The CMG's proxied URLs, read the same way at both ends of the channel.

    https://<cmg name>/CCM_Proxy_(MutualAuth|ServerAuth)/<roleId>/<path>?<query>

The CMG authorises a request on the path it parsed and forwards a URL it builds from those parsed parts
only (never the client's `Host` or raw target); the connection point parses that URL again with the same
rules and refuses anything outside the site's published allowlist. A target that could be read two ways
is refused outright: encoded `/`, `\\` or `%` (double escaping, which IIS refuses too), `.`/`..` or empty
segments (a trailing `/` aside), control characters, a fragment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from cmglab.wire.cloud_config import CloudConfig

Family = Literal["MutualAuth", "ServerAuth"]
FAMILIES: dict[str, Family] = {"mutualauth": "MutualAuth", "serverauth": "ServerAuth"}

_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|25)", re.IGNORECASE)
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_QUERY_OK = re.compile(r"^[\x21-\x7e]*$")
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"  # RFC 3986 pchar minus the percent sign


class UrlRefused(ValueError):
    """A request target or authority the CMG does not take."""


def segments(raw_path: str) -> list[str]:
    """The decoded segments of an origin-form path, or UrlRefused for one that could be read two ways."""
    if not raw_path.startswith("/"):
        raise UrlRefused(f"request target {raw_path[:80]!r} is not an absolute path")
    if _ENCODED_SEPARATOR.search(raw_path):
        raise UrlRefused("request target has an encoded '/', '\\' or '%' (double escaping)")
    try:
        parts = [unquote(p, errors="strict") for p in raw_path[1:].split("/")]
    except UnicodeDecodeError as e:
        raise UrlRefused("request target is not UTF-8 once decoded") from e
    for i, part in enumerate(parts):
        if (part == "" and i < len(parts) - 1) or part in (".", "..") or _BAD_CHARS.search(part):
            raise UrlRefused(f"request target has an empty, '.', '..' or malformed segment: {part[:40]!r}")
    return parts


def check_query(query: str) -> str:
    if not _QUERY_OK.match(query) or "#" in query:
        raise UrlRefused("query string has spaces, control characters or a fragment")
    return query


def same_authority(authority: str, name: str, port: int) -> bool:
    """`authority` (a Host header) names this host: `name` (port 443 only) or `name:port`, case-insensitive."""
    host, sep, given = authority.partition(":")
    if host.lower() != name.lower():
        return False
    return given == str(port) if sep else port == 443


@dataclass(frozen=True)
class ProxyTarget:
    family: Family
    role_id: str
    parts: tuple[str, ...]  # decoded segments after the role ID
    query: str = ""

    @property
    def rest(self) -> str:
        """The path after the role ID, decoded, no leading slash: what the allowlist is matched on."""
        return "/".join(self.parts)

    @property
    def endpoint(self) -> str:
        return self.parts[0]

    def quoted_rest(self) -> str:
        return "/".join(quote(p, safe=_SEGMENT_SAFE) for p in self.parts)

    def url(self, cmg_name: str) -> str:
        """The external URL as the CMG forwards it: its own name, the canonical family, the parsed parts."""
        path = f"/CCM_Proxy_{self.family}/{self.role_id}/{self.quoted_rest()}"
        return f"https://{cmg_name}{path}" + (f"?{self.query}" if self.query else "")


def proxy_target(raw_path: str, query: str = "") -> ProxyTarget | None:
    """A CCM_Proxy target from the raw path (None: not a CCM_Proxy path with a role ID and a rest)."""
    parts = segments(raw_path)
    if len(parts) < 3 or not parts[0].lower().startswith("ccm_proxy_"):
        return None
    family = FAMILIES.get(parts[0].lower().removeprefix("ccm_proxy_"))
    if family is None or not parts[1].isdigit() or not parts[1].isascii():
        return None
    return ProxyTarget(family, parts[1], tuple(parts[2:]), check_query(query))


def parse_url(url: str, cmg_name: str) -> ProxyTarget:
    """The connection point's reading of the URL the CMG sent: https, the CMG's own name, a CCM_Proxy path."""
    parts = urlsplit(url)
    if (
        parts.scheme != "https"
        or (parts.hostname or "").lower() != cmg_name.lower()
        or parts.port is not None
        or parts.username is not None
        or parts.fragment
    ):
        raise UrlRefused(f"{url[:120]!r} is not a URL of the CMG {cmg_name}")
    target = proxy_target(parts.path, parts.query)
    if target is None:
        raise UrlRefused(f"{parts.path[:120]} is not a CCM_Proxy URL")
    return target


def published(config: CloudConfig | None, role_id: str, rest: str) -> str | None:
    """The published path that lets `<role_id>/<rest>` through, or None. A published path matches the same
    path or anything below it, case-insensitively."""
    if config is None or not config.allow_cmg:
        return None
    endpoint = config.endpoints.get(role_id)
    if endpoint is None:
        return None
    rest = rest.lower()
    for path in endpoint.paths:
        p = str(path).strip("/").lower()
        if p and (rest == p or rest.startswith(p + "/")):
            return str(path)
    return None
