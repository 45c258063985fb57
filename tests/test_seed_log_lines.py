"""docs/seed-log-lines.md, row by row: every line seeds 001 and 004 quote, written by the lab in the log the
seed names, after the documented commands only (device create, dsregcmd /join, cmglab device break
device-key, ccmsetup, ccmexec --renew-token)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from tests.support.agent import messages, new_device, run
from tests.support.lab import lab_fixture

SPEC = Path(__file__).resolve().parent.parent / "docs" / "seed-log-lines.md"
SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")
SITE_LOGS = {"CMGService.log": "cmg", "SMS_CLOUD_PROXYCONNECTOR.log": "cmg-connection-point"}


def spec_rows() -> list[tuple[str, str]]:
    rows = []
    for line in SPEC.read_text().splitlines():
        if not line.startswith("| ") or line.startswith(("| file", "|---")):
            continue
        name = line.split(" | ", 1)[0].removeprefix("| ").strip()
        pattern = line[line.index("`") + 1 : line.rindex("`")].replace("\\|", "|")
        rows.append((name, pattern))
    return rows


def test_the_spec_parses() -> None:
    rows = spec_rows()
    assert len(rows) > 70
    for _, pattern in rows:
        re.compile(pattern)


services = lab_fixture(*SERVICES)


@dataclass(frozen=True)
class SeedRun:
    device: Device
    adal_before_renewal: int  # ADALOperationProvider.log's messages before `ccmexec --renew-token`


@pytest.fixture(scope="module")
def seed_run(lab: Lab, services: Lab, lab_services: LabProcesses, tmp_path_factory: pytest.TempPathFactory) -> SeedRun:
    home = tmp_path_factory.mktemp("seed") / "seed01"
    device = new_device(lab.dir, home)
    user = lab.config.primary_tenant.users[0]
    cmg = f"{lab.url('cmg').removeprefix('https://')}/CCM_Proxy_MutualAuth/{lab.config.site.role_id}"
    adal_before_renewal = 0
    for command in (
        ("cmglab.agent.dsregcmd", "/join", "--home", str(home), "--username", user.upn, "--password", user.password),
        ("cmglab", "device", "break", "device-key", "--home", str(home), "--lab", str(lab.dir)),
        ("cmglab.agent.ccmsetup", "--home", str(home), f"CCMHOSTNAME={cmg}", f"SMSSITECODE={lab.config.site.code}"),
        ("cmglab.agent.ccmexec", "--home", str(home), "--renew-token"),
    ):
        if "--renew-token" in command:
            adal_before_renewal = len(messages(device.ccm_log_path("ADALOperationProvider.log")))
        result = run(*command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    # the CMG writes its per-URI summaries every five minutes and when it stops (as `cmglab down` stops it)
    lab_services.stop("cmg")
    lab_services.start("cmg")
    return SeedRun(device, adal_before_renewal)


def log_text(lab: Lab, device: Device, name: str) -> str:
    if name == "ccmsetup.log":
        return "\n".join(messages(device.ccmsetup_log_path))
    if name == "*.log":
        return "\n".join("\n".join(messages(p)) for p in sorted(device.ccm_log_path("x").parent.glob("*.log")))
    if device.ccm_log_path(name).exists():
        return "\n".join(messages(device.ccm_log_path(name)))
    path = lab.dir / "logs" / SITE_LOGS.get(name, "management-point") / name
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize(("name", "pattern"), spec_rows(), ids=lambda v: str(v)[:60])
def test_seed_line(lab: Lab, seed_run: SeedRun, name: str, pattern: str) -> None:
    text = log_text(lab, seed_run.device, name)
    assert re.search(pattern, text, re.IGNORECASE | re.MULTILINE), f"{name} lacks {pattern!r}:\n{text[-3000:]}"


# seed 001 "Client registration" 1-4 in its order (issue 17): the registration carries the fresh Entra token; the
# CCM token is asked for only after the approval
REGISTRATION_ORDER = [
    r"AADJoinStatusTask: Client hasn't been registered yet\.",
    r"RegEndPoint: Event notification: CCM_RemoteClient_Reassigned",
    r"RegEndPoint: Received notification for site assignment change from '<none>' to '",
    r"\[RegTask\] - Starting registration, attempt 1\.",
    r"\[RegTask\] - Client is not registered\. Sending registration request for GUID:",
    r"Registering client using AAD auth\.",
    r"\[RegTask\] - Client is registered\. Server assigned ClientID is GUID:[0-9A-F-]{36}\. Approval status 3",
    r"Getting CCM Token from STS server '",
    r"Getting CCM Token from https://\S+/CCM_STS",
    r"Cached encrypted token for 'S-1-5-18'\. Will expire at '",
]


def test_the_registration_follows_the_seeds_order(lab: Lab, seed_run: SeedRun) -> None:
    lines = log_text(lab, seed_run.device, "ClientIDManagerStartup.log").splitlines()
    at = [next(i for i, line in enumerate(lines) if re.search(rx, line)) for rx in REGISTRATION_ORDER]
    assert at == sorted(at), list(zip(REGISTRATION_ORDER, at, strict=True))
    registering, approved = at[REGISTRATION_ORDER.index(r"Registering client using AAD auth\.")], at[6]
    assert not [line for line in lines[registering:approved] if "CCM Token" in line], lines[registering:approved]
    # the Entra token it carried came after WAM's failure, from the signed-in user (seed 001's sample run)
    adal = log_text(lab, seed_run.device, "ADALOperationProvider.log")
    assert adal.index("Unknown error (Error: D0090016; Source: Unknown)") < adal.index(
        "Retrieved AAD token for AAD user"
    )


RENEWAL = (  # seed 001's "CCM token renewal", in its order (the seed's "..." may hold other lines)
    r"Sending remote sync message '\{[0-9A-F-]{36}\}' to host '\S+' endpoint 'MP_PolicyManager'\. Flags 0x280",
    r"CCM Token for '\S+' \(.*\) is already expired or close to expire",
    r"Getting CCM Token from https://\S+/CCM_Proxy_ServerAuth/\d+/CCM_STS",
    r"Cached encrypted token for '\S+'\. Will expire at '",
    r"ccmhttp: Host=\S+, Path=/CCM_Proxy_ServerAuth/\d+/ccm_system_tokenauth/request, ",
    r"Target URL scheme is HTTPS: https://",
    r"Appending CCM Token to the header\.",
    r"Message '\{[0-9A-F-]{36}\}' got reply message '\{[0-9A-F-]{36}\}' to endpoint 'dummy'",
)


def test_the_renewal_in_the_seeds_order(seed_run: SeedRun) -> None:
    """`ccmexec --renew-token`: CcmMessaging.log shows the seed's renewal lines in the seed's order; the Entra
    token it needs (here through the WAM failure and the user fallback) is logged in ADALOperationProvider.log."""
    lines = messages(seed_run.device.ccm_log_path("CcmMessaging.log"))
    start = max(n for n, line in enumerate(lines) if re.match(RENEWAL[0], line))
    at = start
    for pattern in RENEWAL[1:]:
        at = next((n for n in range(at + 1, len(lines)) if re.match(pattern, lines[n])), -1)
        assert at != -1, (pattern, lines[start:])
    assert not [line for line in lines if "AAD" in line or "WAM" in line], lines
    renewal_adal = messages(seed_run.device.ccm_log_path("ADALOperationProvider.log"))[seed_run.adal_before_renewal :]
    assert "Unknown error (Error: D0090016; Source: Unknown)" in renewal_adal, renewal_adal
    assert re.match(r"Retrieved AAD token for AAD user '[0-9a-f-]{36}'$", renewal_adal[-1]), renewal_adal
