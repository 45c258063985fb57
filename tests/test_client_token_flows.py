"""Flows 5, 6 and 7: bulk registration token through the CMG (the token never stored), internal
network registration then roaming to the internet with the MP-issued token, and the PKI client
(CCM_Proxy_MutualAuth with TLS client authentication, no Entra)."""

from __future__ import annotations

from pathlib import Path

from cmglab.agent.ccm.state import ClientState
from cmglab.agent.ccm.tokens import ClientTokenStore
from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from tests.support.agent import assert_lines, log_of, new_device, run
from tests.support.client import SERVICES, assert_clean, ccmhostname, ccmsetup, intranet_ccmsetup, new_bulk_token
from tests.support.lab import lab_fixture

services = lab_fixture(*SERVICES, autouse=True)


def everything(device: Device) -> bytes:
    return b"".join(p.read_bytes() for p in device.home.rglob("*") if p.is_file())


def test_bulk_registration_token(lab: Lab, tmp_path: Path) -> None:
    bulk = new_bulk_token(lab)
    token = bulk["token"]
    device = new_device(lab.dir, tmp_path / "dev", "--name", "BULK01")
    cmg = ccmhostname(lab)
    r = ccmsetup(device, f"/mp:https://{cmg}", f"CCMHOSTNAME={cmg}", "SMSSITECODE=MEM", f"/regtoken:{token}")
    assert r.returncode == 0, r.stderr
    assert token.encode() not in everything(device)  # never written anywhere on the device
    assert_lines(
        device,
        "ccmsetup.log",
        r"/regtoken:<redacted \d+ characters>",
        r"Getting CCM Token from https://\S+/CCM_Proxy_MutualAuth/\d+/CCM_STS",  # as CCMHOSTNAME names it
        r"Cached encrypted token for 'S-1-5-18'",
    )
    assert_lines(
        device,
        "ClientIDManagerStartup.log",
        r"Registering client using bulk registration token\.",
        r"Received the client's unique token from the management point \(valid 90 days\)",
        r"\[RegTask\] - Client is registered\. Server assigned ClientID is GUID:[0-9A-F-]{36}\. "
        r"Approval status 1",
    )
    state = ClientState.load(device)
    assert state is not None and state.auth_mode == "token"
    stored = ClientTokenStore(device).get()
    assert stored is not None and stored["Token"] != token
    # afterwards the client uses its own token: the bulk token could be blocked now
    guid = next(v for k, v in bulk.items() if k.lower() in ("guid", "token_guid", "unique_id", "id"))
    assert run("cmglab", "bulk-token", "block", guid, "--lab", str(lab.dir)).returncode == 0
    device.token_cache_path.unlink()
    r = run("cmglab.agent.ccmexec", "--home", str(device.home))
    assert r.returncode == 0, r.stderr
    assert_lines(
        device, "CcmMessaging.log", r"Getting CCM Token from https://\S+/CCM_STS", r"endpoint 'MP_PolicyManager'"
    )
    # the monthly renewal of the unique token
    old = ClientTokenStore(device).get()
    assert old is not None
    import json

    path = device.client_token_path
    entry = json.loads(device.dpapi.unprotect(path.read_bytes(), "CCM client unique token"))
    entry["IssuedAt"] = "2020-01-01T00:00:00Z"
    device.dpapi.save(path, entry, "CCM client unique token")
    device.token_cache_path.unlink()
    r = run("cmglab.agent.ccmexec", "--home", str(device.home))
    assert r.returncode == 0, r.stderr
    fresh = ClientTokenStore(device).get()
    assert fresh is not None and fresh["Token"] != old["Token"]
    assert "Renewed the client's unique token" in log_of(device, "CcmMessaging.log") + log_of(
        device, "ClientIDManagerStartup.log"
    )


def test_internal_registration_then_roaming(lab: Lab, tmp_path: Path) -> None:
    device = new_device(lab.dir, tmp_path / "dev", "--domain", "--name", "LAB01")
    r = intranet_ccmsetup(lab, device, f"CCMHOSTNAME={ccmhostname(lab)}")
    assert r.returncode == 0, log_of(device, "ccmsetup.log")[-3000:]
    assert_lines(
        device,
        "ccmsetup.log",
        r"CCMSETUP bootstrap from Internet: 0",
        r"Installing version 5\.00\.\d+\.\d+ of the client",
    )
    assert_lines(
        device,
        "ClientIDManagerStartup.log",
        r"Registering client using Windows authentication",
        r"\[RegTask\] - Client is registered\. Server assigned ClientID is GUID:[0-9A-F-]{36}\. "
        r"Approval status 1",
        r"unique token",
    )
    assert ClientTokenStore(device).get() is not None
    r = run("cmglab.agent.ccmexec", "--home", str(device.home))
    assert r.returncode == 0, r.stderr
    assert "Client is on the intranet" in log_of(device, "ClientLocation.log")
    # roam: the corporate network (the MP's name) is gone
    device.write_hosts(
        [
            line
            for line in device.hosts_path.read_text().splitlines()
            if not line.startswith(lab.config.hosts.management_point + ":")
        ]
    )
    r = run("cmglab.agent.ccmexec", "--home", str(device.home))
    assert r.returncode == 0, r.stderr
    assert_lines(
        device,
        "ClientLocation.log",
        r"Client is on internet",
        r"Rotating internet management point, new management point \[1\] is: https://\S+/"
        r"CCM_Proxy_MutualAuth/\d+",
    )
    assert_lines(
        device,
        "CcmMessaging.log",
        r"Path=/CCM_Proxy_ServerAuth/\d+/ccm_system_tokenauth/request",
        r"endpoint 'MP_PolicyManager'",
    )


def test_pki_client(lab: Lab, tmp_path: Path) -> None:
    device = new_device(lab.dir, tmp_path / "dev", "--name", "PKI01", "--pki-cert")
    r = ccmsetup(device, f"CCMHOSTNAME={ccmhostname(lab)}", "SMSSITECODE=MEM", "/usepkicert")
    assert r.returncode == 0, r.stderr
    assert_lines(
        device,
        "ccmsetup.log",
        r"Found a valid PKI client authentication certificate",
        r"Path=/CCM_Proxy_MutualAuth/\d+/ccm_system/request",
    )
    text = log_of(device, "ccmsetup.log")
    assert "Getting AAD" not in text
    state = ClientState.load(device)
    assert state is not None and state.auth_mode == "pki" and state.approval == 1
    r = run("cmglab.agent.ccmexec", "--home", str(device.home))
    assert r.returncode == 0, r.stderr
    assert_lines(device, "CcmMessaging.log", r"Path=/CCM_Proxy_MutualAuth/\d+/ccm_system/request.*CcmTokenAuth=0")


def test_usepkicert_without_a_certificate(lab: Lab, tmp_path: Path) -> None:
    device = new_device(lab.dir, tmp_path / "dev")
    r = ccmsetup(device, f"CCMHOSTNAME={ccmhostname(lab)}", "SMSSITECODE=MEM", "/usepkicert")
    assert r.returncode == 6
    assert "no valid PKI client authentication certificate" in log_of(device, "ccmsetup.log")
    assert_clean(device)
