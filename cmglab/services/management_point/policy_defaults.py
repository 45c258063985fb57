"""The lab site's default machine policies (what a fresh site database is seeded with)."""

from __future__ import annotations

import uuid

from cmglab.runtime.lab import Lab
from cmglab.services.management_point import policy_crypto
from cmglab.services.management_point.store import Policy

FLAGS_SECRET_NAA = 2 | 4 | 16  # RequiresAuth, Secret, PersistWholePolicy
NAA_CATEGORY = "NAAConfig"


def _guid() -> str:
    return "{" + str(uuid.uuid4()).upper() + "}"


def _policy_xml(policy_id: str, version: str, site: str, instances: str) -> str:
    return (
        f'<Policy PolicyID="{policy_id}" PolicyVersion="{version}" PolicyType="Machine" '
        f'PolicySource="SMS:{site}"><PolicyRule PolicyRuleID="{_guid()}">'
        f'<PolicyAction PolicyActionType="WMI-XML">{instances}</PolicyAction></PolicyRule></Policy>'
    )


def client_settings_xml(policy_id: str, version: str, site_code: str, allow_cmg: bool) -> str:
    """Default client settings, Cloud Services: "Allow clients to use a cloud management gateway" (seed 003:
    without it a client does not talk to the CMG, whatever token it has)."""
    cmg = (
        '<instance class="CCM_ClientCloudManagementGatewayConfig"><property name="SiteSettingsKey" type="19">'
        f'<value>1</value></property><property name="AllowCMG" type="11"><value>{int(allow_cmg)}</value>'
        "</property></instance>"
    )
    return _policy_xml(policy_id, version, site_code, cmg)


def default_policies(lab: Lab) -> list[Policy]:
    """The lab site's machine policies: client agent settings, client settings and, because the
    site has a network access account, the secret NAAConfig policy."""
    site = lab.config.site
    out = []
    pid = _guid()
    agent = (
        '<instance class="CCM_ClientAgentConfig"><property name="SiteSettingsKey" type="19"><value>1</value>'
        '</property><property name="PolicyRequestAssignmentTimeout" type="19"><value>60</value></property>'
        "</instance>"
    )
    out.append(
        Policy(
            policy_id=pid,
            version="2.00",
            category="ClientAgentConfig",
            flags=0,
            assignment_id=_guid(),
            body=_policy_xml(pid, "2.00", site.code, agent),
        )
    )
    pid = _guid()
    out.append(
        Policy(
            policy_id=pid,
            version="1.00",
            category="ClientSettings",
            flags=0,
            assignment_id=_guid(),
            body=client_settings_xml(pid, "1.00", site.code, site.client_allow_cmg),
        )
    )
    naa = site.network_access_account
    pid = _guid()
    instances = (
        '<instance class="CCM_NetworkAccessAccount">'
        '<property name="SiteSettingsKey" type="19"><value>1</value></property>'
        '<property name="NetworkAccessUsername" type="8" secret="1"><value><![CDATA['
        f"{policy_crypto.obfuscate_secret(naa.username)}]]></value></property>"
        '<property name="NetworkAccessPassword" type="8" secret="1"><value><![CDATA['
        f"{policy_crypto.obfuscate_secret(naa.password)}]]></value></property>"
        '<property name="Reserved1" type="8"><value></value></property></instance>'
    )
    out.append(
        Policy(
            policy_id=pid,
            version="2.00",
            category=NAA_CATEGORY,
            flags=FLAGS_SECRET_NAA,
            assignment_id=_guid(),
            body=_policy_xml(pid, "2.00", site.code, instances),
        )
    )
    return out
