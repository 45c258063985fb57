"""Flows 2, 3 and 4 (seed 001): ccmsetup over the internet with Entra auth through CMG -> connection
point -> MP, registration (approval status 3), CCM token renewal by CcmMessaging, policy (secret
policy decrypted), and /uninstall. Every step against the running services over real (m)TLS."""

from __future__ import annotations

import re
from pathlib import Path

from cmglab.agent.ccm.state import ClientState
from cmglab.agent.ccm.tokens import TokenCache
from cmglab.runtime.lab import Lab
from tests.support.agent import assert_lines, log_of, run
from tests.support.client import SERVICES, ccmhostname, ccmsetup, joined_device
from tests.support.lab import lab_fixture

services = lab_fixture(*SERVICES, autouse=True)


def test_entra_install_register_renew_policy_uninstall(lab: Lab, tmp_path: Path) -> None:
    device = joined_device(lab, tmp_path / "dev")
    r = ccmsetup(device, f"CCMHOSTNAME={ccmhostname(lab)}", f"SMSSITECODE={lab.config.site.code}")
    assert r.returncode == 0, r.stderr
    tenant = lab.config.primary_tenant.tenant_id
    # flow 2: seed 001 "Client installation" 1-4, in ccmsetup.log
    assert_lines(
        device,
        "ccmsetup.log",
        r"Getting AAD info from CMG '",
        rf"Path=/CCM_Proxy_ServerAuth/AADAuthInfo\?TenantID={tenant}.*CcmTokenAuth=0",
        r"Created connection on port \d+",
        r"Enabled SSL revocation check\.",
        r"Getting AAD \(device\) token with: ClientId = [0-9a-f-]+, ResourceUrl = \S+, AccountId = \S+",
        r"Getting CCM Token from STS server '\S+/CCM_Proxy_MutualAuth/\d+'",
        r"Getting CCM Token from https://\S+/CCM_Proxy_MutualAuth/\d+/CCM_STS",  # seed 001 §3.1
        r"Cached encrypted token for 'S-1-5-18'\. Will expire at '",
        r"Path=/CCM_Proxy_ServerAuth/\d+/ccm_system_tokenauth/request.*CcmTokenAuth=1",
        r"Sending location request to '",
        r"Appending CCM Token to the header\.",
        r"Received message '<SiteInfoReply SchemaVersion=\"1\.00\">",
        r"Checking the URL 'https://\S+/CCM_Client/ccmsetup\.cab",
        r"Found a valid online MP 'https://",
        r"Searching for DP locations from MP\(s\)\.\.\.",
        r"CCMSETUP bootstrap from Internet: 1",
        r"Sending message body '<ContentLocationRequest SchemaVersion=\"1\.00\"",
        r"The location 'https://\S+/downloadrestservice\.svc/getcontentxmlsecure\?pid=",
        r"Installing version 5\.00\.\d+\.\d+ of the client with product code \{[0-9A-F-]{36}\}",
        r"Running installation package",
        r"Package:\s+\S*client\.msi",
        r"CcmSetup is exiting with return code 0",
    )
    # seed 001 §4 in its order: the token, the connection (Host=, then Created connection), the location request
    lines = log_of(device, "ccmsetup.log").splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("Cached encrypted token for 'S-1-5-18'"))
    order = [
        r"ccmsetup: Host=\S+, Path=/CCM_Proxy_ServerAuth/\d+/ccm_system_tokenauth/request, Port=\d+, "
        r"Protocol=https, CcmTokenAuth=1, Flags=0x4100, Options=0xe0$",
        r"Created connection on port \d+$",
        r"Sending location request to '",
        r"Appending CCM Token to the header\.$",
        r"Received message '<SiteInfoReply",
    ]
    following = [
        line
        for line in lines[start + 1 :]  # lines the seed's excerpt leaves out
        if line != "Enabled SSL revocation check." and not line.startswith("Message '{")
    ][: len(order)]
    assert all(re.match(rx, line) for rx, line in zip(order, following, strict=True)), following
    # flow 3: registration with Entra auth
    assert_lines(
        device,
        "ClientIDManagerStartup.log",
        r"AADJoinStatusTask: Client hasn't been registered yet\.",
        r"RegEndPoint: Event notification: CCM_RemoteClient_Reassigned",
        r"RegEndPoint: Received notification for site assignment change from '<none>' to 'MEM'",
        r"\[RegTask\] - Starting registration, attempt 1\.",
        r"\[RegTask\] - Client is not registered\. Sending registration request for GUID:",
        r"Registering client using AAD auth\.",
        r"\[RegTask\] - Client is registered\. Server assigned ClientID is GUID:[0-9A-F-]{36}\. "
        r"Approval status 3",
        r"Getting CCM Token from STS server '",
        r"Cached encrypted token for 'S-1-5-18'",
    )
    assert_lines(
        device,
        "ADALOperationProvider.log",
        r"Getting AAD \(device\) token with: ClientId =",
        r"Retrieved AAD token for AAD device '",
    )
    # the seed's order: the registration carries the fresh Entra token; the CCM token comes after approval
    reg = log_of(device, "ClientIDManagerStartup.log").splitlines()
    start = next(i for i, line in enumerate(reg) if "Registering client using AAD auth." in line)
    done = next(i for i, line in enumerate(reg) if "Approval status 3" in line)
    assert start < done and not any("CCM Token" in line for line in reg[start:done]), reg[start:done]
    assert any("Appending AAD token to the header." in line for line in reg[start:done]), reg[start:done]
    assert "Getting CCM Token from STS server '" in reg[done + 1], reg[done:]
    mp_logs = lab.dir / "logs" / "management-point"
    assert re.search(
        r"ccm_system_tokenauth/request: Entra token accepted \(tenant [0-9a-f-]{36}, device [0-9a-f-]{36}",
        (mp_logs / "ClientAuth.log").read_text(),
    )
    state = ClientState.load(device)
    assert state is not None and state.installed and state.approval == 3 and state.auth_mode == "aad"
    assert state.sms_id and state.sms_id.startswith("GUID:")
    cache = TokenCache(device)
    assert cache.get() is not None and b"eyJ" not in device.token_cache_path.read_bytes()  # encrypted at rest
    # the site's view
    assert state.sms_id in (lab.dir / "logs" / "management-point" / "MP_RegistrationManager.log").read_text()
    # flow 4: CcmMessaging renews the token before the MP_PolicyManager message (`--renew-token`: now, as when
    # the 8-hour token is close to expiry)
    entry = cache.get()
    assert entry is not None
    r = run("cmglab.agent.ccmexec", "--home", str(device.home), "--renew-token")
    assert r.returncode == 0, r.stderr
    fresh = cache.get()
    assert fresh is not None and fresh["Token"] != entry["Token"]
    assert f"ccmexec: CCM token renewed (CcmMessaging.log), valid until {fresh['ExpiresOn']}" in r.stdout
    assert_lines(
        device,
        "CcmMessaging.log",
        r"Sending remote sync message '\{[0-9A-F-]{36}\}' to host '\S+' endpoint 'MP_PolicyManager'",
        r"CCM Token for '\S+' \(.*\) is already expired or close to expire",
        r"Getting CCM Token from https://\S+/CCM_Proxy_ServerAuth/\d+/CCM_STS",
        r"Cached encrypted token for 'S-1-5-18'\. Will expire at '\d\d/\d\d/\d{4} \d\d:\d\d:\d\d'",
        r"ccmhttp: Host=\S+, Path=/CCM_Proxy_ServerAuth/\d+/ccm_system_tokenauth/request.*CcmTokenAuth=1",
        r"Target URL scheme is HTTPS: https://",
        r"Appending CCM Token to the header\.",
        r"Message '\{[0-9A-F-]{36}\}' got reply message '\{[0-9A-F-]{36}\}'",
    )
    renewed = cache.expires()
    assert renewed is not None and renewed.year > 2020
    assert_lines(
        device,
        "LocationServices.log",
        r"Rotating internet management point, new management point \[1\] is: https://\S+/"
        r"CCM_Proxy_MutualAuth/\d+ \(0\) with capabilities: <Capabilities SchemaVersion =\"1\.0\">"
        r"<Property Name=\"SSL\" Version=\"1\" /></Capabilities>",
    )
    assert_lines(
        device,
        "PolicyAgent.log",
        r"Received \d+ Machine policy assignment\(s\) \(1 secret\)",
        r"Downloaded secret policy .* \(NAAConfig\); decrypted",
    )
    secret = list(device.policy_dir.glob("*.bin"))
    assert len(secret) == 1 and b"NetworkAccess" not in secret[0].read_bytes()
    naa = device.dpapi.unprotect(secret[0].read_bytes(), "secret policy").decode()
    assert "CCM_NetworkAccessAccount" in naa
    # a second ccmsetup: already installed, nothing to do
    again = ccmsetup(device, f"CCMHOSTNAME={ccmhostname(lab)}", "SMSSITECODE=MEM")
    assert again.returncode == 0 and "already installed" in log_of(device, "ccmsetup.log")
    # /uninstall removes the client cleanly
    r = ccmsetup(device, "/uninstall")
    assert r.returncode == 0
    assert not device.client_path.exists() and not device.token_cache_path.exists()
    assert not device.policy_dir.exists() and not (device.ccm_dir / "client.msi").exists()
    assert run("cmglab.agent.ccmexec", "--home", str(device.home)).returncode == 2


def test_aad_properties_on_the_command_line(lab: Lab, tmp_path: Path) -> None:
    """With AADTENANTID/AADCLIENTAPPID/AADRESOURCEURI given, ccmsetup does not ask the CMG; the device
    token alone suffices (no signed-in user account left after /cleanupaccounts)."""
    device = joined_device(lab, tmp_path / "dev")
    assert run("cmglab.agent.dsregcmd", "/cleanupaccounts", "--home", str(device.home)).returncode == 0
    r = ccmsetup(
        device,
        f"CCMHOSTNAME={ccmhostname(lab)}",
        "SMSSITECODE=MEM",
        f"AADTENANTID={lab.config.primary_tenant.tenant_id}",
        f"AADCLIENTAPPID={lab.config.apps[0].app_id}",
        "AADRESOURCEURI=https://ConfigMgrService",
    )
    assert r.returncode == 0, r.stderr
    assert "Getting AAD info from CMG" not in log_of(device, "ccmsetup.log")  # the properties were given
