"""External CMG URL -> internal MP URL, from the role-ID table the site publishes (docs/protocol-notes.md, Lab §3):

    https://<cmg>/CCM_Proxy_(MutualAuth|ServerAuth)/<roleId>/<path>?<q>  ->  <internal_url>/<path>?<q>

The point trusts nothing in the URL the CMG sends beyond what it parses again here
(cmglab/wire/cmg_urls.py): the authority must be the CMG's name, and `<path>` must be one the site
published for that role ID (the same allowlist the CMG applied); the internal URL is built from the
parsed parts, so no client-chosen byte can change which host or vdir the MP call goes to.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmglab.wire import cmg_urls
from cmglab.wire.cloud_config import CloudConfig


class RewriteError(Exception):
    pass


@dataclass(frozen=True)
class Rewrite:
    external_url: str  # as the CMG sent it, query included
    replaced: str  # the external URL without the query: what gets replaced
    internal_base: str  # the MP URL the role ID maps to, plus the path
    internal_url: str  # internal_base plus the query
    role_id: str
    endpoint: str  # the first path segment (CCM_STS, ccm_system, CCM_Client, ...)

    def log_line(self) -> str:
        return (
            f"Switched to internal URL. Replaced '{self.replaced}' in   '{self.external_url}' with "
            f"'{self.internal_base}' and got '{self.internal_url}'"
        )


def rewrite(external_url: str, config: CloudConfig | None, cmg_name: str) -> Rewrite:
    """RewriteError: not a URL of `cmg_name`, not a CCM_Proxy path, or a path the site did not publish."""
    try:
        target = cmg_urls.parse_url(external_url, cmg_name)
    except cmg_urls.UrlRefused as e:
        raise RewriteError(str(e)) from e
    endpoint = config.endpoints.get(target.role_id) if config is not None else None
    if endpoint is None or not endpoint.internal_url:
        raise RewriteError(f"role ID {target.role_id} is not in the site's published endpoint table")
    if cmg_urls.published(config, target.role_id, target.rest) is None:
        raise RewriteError(f"{target.rest[:120]} is not a path the site published for role ID {target.role_id}")
    base = f"{endpoint.internal_url.rstrip('/')}/{target.quoted_rest()}"
    internal = base + (f"?{target.query}" if target.query else "")
    return Rewrite(external_url, external_url.split("?", 1)[0], base, internal, target.role_id, target.endpoint)
