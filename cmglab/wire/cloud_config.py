"""The site's published CMG configuration (`GET <mp>/CCM_Cloud/config`): what the MP publishes from its site
settings, the connection point polls and forwards on every heartbeat, and the CMG enforces. One typed model
on all three sides (the JSON is `CloudConfig.model_dump()`); a change of a site setting reaches the CMG with
the next heartbeat, without a restart.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Published(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PublishedEndpoint(_Published):
    """A site role the CMG may reach (the MP): its internal URL and the paths published for the cloud."""

    internal_url: str
    paths: list[str] = []


class OnboardedTenant(_Published):
    """An Entra tenant onboarded to the site (Cloud Services > Azure Services)."""

    tenant_id: str
    client_app_id: str = ""
    resource_uri: str = ""
    server_app_id: str = ""  # the tenant's server app: v2 tokens carry it as their audience
    authority: str = ""


class CloudContent(_Published):
    """The content-enabled CMG's storage: the client package, and the site setting that enables it."""

    package_id: str = ""
    version: int = 1
    enabled: bool = True  # site setting content_enabled_cmg


class CloudConfig(_Published):
    site_code: str = ""
    allow_cmg: bool = True  # site setting allow_cmg: off publishes no endpoints
    endpoints: dict[str, PublishedEndpoint] = {}  # role ID → endpoint
    tenants: list[OnboardedTenant] = []
    content: CloudContent = CloudContent()

    def tenant(self, tenant_id: str) -> OnboardedTenant | None:
        return next((t for t in self.tenants if t.tenant_id.lower() == tenant_id.lower()), None)
