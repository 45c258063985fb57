"""Secrets at rest (issue 10): private keys and the lab's secret files are 0600, the device's token
cache is sealed, the bulk token is stored nowhere, and no log line the suite produced holds a secret.

The log scan runs twice: once as a test (what the session wrote so far) and once when the session
ends, from a session-scoped finalizer — pytest orders modules by name, so a test cannot run after
`test_tracing.py`; the finalizer does, and a leak found there is reported as an error of this module.
"""

from __future__ import annotations

import base64
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmglab.agent.ccm.tokens import ClientTokenStore, TokenCache
from cmglab.agent.protect import MAGIC
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from cmglab.tools.reliability.material import Material
from cmglab.wire import ccm_messaging as cm
from tests.support.agent import new_device
from tests.support.lab import lab_client
from tests.support.mp import Device, ccm_post, https_url, reply_body

JWT = re.compile(rb"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{16,}")
MINTED: list[str] = []  # bulk tokens this module minted: none may appear anywhere in the lab


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def passwords(config: Any) -> list[str]:
    """Every `password` value in lab.json (Entra users, domain accounts, ...)."""
    if isinstance(config, dict):
        return [v for k, v in config.items() if k == "password" and isinstance(v, str) and v] + [
            p for v in config.values() for p in passwords(v)
        ]
    if isinstance(config, list):
        return [p for v in config for p in passwords(v)]
    return []


def leaks(lab: Lab) -> list[str]:
    """Secrets in any file under <lab>/logs: passwords, the admin token, bulk tokens, PEM private keys,
    and whole JWTs (a log may name a token by its ID, never carry one that could be replayed)."""
    secrets = [*passwords(json.loads((lab.dir / "lab.json").read_text())), lab.admin_token(), *MINTED]
    found = []
    for path in sorted((lab.dir / "logs").rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        found += [f"{path.relative_to(lab.dir)}: a secret ({s[:4]}…)" for s in secrets if s.encode() in data]
        if b"PRIVATE KEY-----" in data:
            found.append(f"{path.relative_to(lab.dir)}: a PEM private key")
        found += [f"{path.relative_to(lab.dir)}: a JWT ({m[:24].decode()}…)" for m in JWT.findall(data)]
    return found


@pytest.fixture(scope="session")
def session_log_scan(lab: Lab) -> Iterator[None]:
    yield
    found = leaks(lab)
    assert not found, "secrets in the session's logs:\n" + "\n".join(found)


def test_private_keys_and_secret_files_are_owner_only(lab: Lab, session_log_scan: None) -> None:
    keys = list(lab.dir.rglob("*.key"))
    assert keys and all(private(k) for k in keys), [str(k) for k in keys if not private(k)]
    assert private(lab.dir / "lab.json") and private(lab.dir / "admin-token")


def test_bulk_token_is_stored_nowhere(lab: Lab, lab_services: LabProcesses, tmp_path: Path) -> None:
    lab_services.ensure("management-point")
    token = Material(lab, tmp_path).bulk_token()
    MINTED.append(token)
    device = Device("BULKREST")
    with lab_client(lab) as c:
        r = c.post(
            f"{https_url(lab)}/CCM_STS",
            json=device.proof("BulkRegistration", token),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        reply = reply_body(
            ccm_post(
                c,
                f"{https_url(lab)}/ccm_system_tokenauth/request",
                device.registration_message(),
                {"Authorization": f"Bearer {r.json()['Token']}"},
            )
        )
    assert cm.parse_xml(reply).get("Status") == "0"
    signature = token.rsplit(".", 1)[1].encode()  # the part no one can recompute
    holders = [p for p in lab.dir.rglob("*") if p.is_file() and signature in p.read_bytes()]
    assert not holders, holders


def test_device_token_cache_and_unique_token_are_sealed(lab: Lab, tmp_path: Path) -> None:
    device = new_device(lab.dir, tmp_path / "device")
    ccm, _ = lab.site_signer().ccm_token(token_type="Device")
    unique, _ = lab.site_signer().client_token(
        sms_id="GUID:00000000-0000-0000-0000-000000000001", cert_thumbprint="00" * 20
    )
    TokenCache(device).put({"Token": ccm, "TokenType": "Device", "ExpiresOn": "2099-01-01T00:00:00Z"}, "AAD")
    ClientTokenStore(device).put(unique)
    assert TokenCache(device).valid() == ccm  # the agent reads back what it sealed
    for path, token in ((device.token_cache_path, ccm), (device.client_token_path, unique)):
        raw = path.read_bytes()
        assert raw.startswith(MAGIC) and private(path)
        for part in token.split("."):
            assert part.encode() not in raw and base64.b64encode(part.encode()) not in raw
    keys = list((tmp_path / "device").rglob("*.key"))
    assert keys and all(private(k) for k in keys), [str(k) for k in keys if not private(k)]


def test_no_secret_in_any_log_so_far(lab: Lab, session_log_scan: None) -> None:
    assert not leaks(lab)
