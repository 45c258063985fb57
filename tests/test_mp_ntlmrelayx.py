"""impacket's `ntlmrelayx.py --sccm-policies`, the real tool run unmodified as a subprocess, against
the MP's connection-based Windows authentication (IIS behaviour).

A victim (a lab computer account, pyspnego as a plain NTLM HTTP client) authenticates to ntlmrelayx's
HTTP listener on loopback; ntlmrelayx relays the handshake to `/ccm_system_windowsauth/request`, then sends
its own registration on that authenticated connection without an Authorization header, requests the
policy list and the secret NAA policy, and deobfuscates the Network Access Account. IIS answers the
relayed connection's later requests as the relayed account; the lab must too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cmglab.runtime.lab import Lab
from tests.support.lab import lab_client, lab_fixture
from tests.support.relay import relay

mp = lab_fixture("management-point")


def test_ntlmrelayx_sccm_policies_recovers_the_naa(mp: Lab, tmp_path: Path) -> None:
    computer = next(a for a in mp.config.active_directory.accounts if a.name.endswith("$"))
    target = f"http://127.0.0.1:{mp.config.ports.management_point_http}/ccm_system_windowsauth/request"
    # other tests' devices use the same vdir in the session's lab: look only at what came after this start
    started = datetime.now(UTC).isoformat(timespec="milliseconds")
    log = relay(
        tmp_path,
        target,
        ["--sccm-policies", "--sccm-policies-sleep", "0"],
        f"CORP\\{computer.name}",
        computer.password,
        timeout=60,
    )
    assert "DONE - attack finished" in log, log
    naa = mp.config.site.network_access_account
    assert f"Retrieved NAA account credentials: '{naa.username}:{naa.password}'" in log, log
    loot = next(tmp_path.glob("127.0.0.1_*_sccm_policies_loot"))
    policies = json.loads((loot / "policies.json").read_text())
    naa_ids = [pid for pid, p in policies.items() if p["PolicyCategory"] == "NAAConfig"]
    assert naa_ids and "SECRET" in policies[naa_ids[0]]["PolicyFlags"]
    guid = (loot / "device" / "guid.txt").read_text().strip()
    with lab_client(mp) as c:
        row = c.get(f"{mp.url('management-point')}/_lab/clients/GUID:{guid}").json()
        seen = c.get(
            f"{mp.url('management-point')}/_lab/requests",
            params={"path": "windowsauth/request"},
            headers={"Authorization": f"Bearer {mp.admin_token()}"},
        ).json()["requests"]
    # registered as the relayed computer account, on a request that carried no Authorization header
    assert row["auth_kind"] == "domain" and row["domain_account"] == f"CORP\\{computer.name}"
    # ntlmrelayx sends absolute-form targets (`CCM_POST http://127.0.0.1/...`): recorded as the URL they are
    posted = [r for r in seen if r["method"] == "CCM_POST" and r["time"] >= started]
    assert posted and all(r["url"] == "http://127.0.0.1/ccm_system_windowsauth/request" for r in posted), posted
    assert any(r.get("auth_kind") == "windows" for r in posted)
