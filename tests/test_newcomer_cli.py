"""What a newcomer sees on an 80-column terminal and in a pipe (issue 21): values to copy are never cut,
every listing has --json, `info` gives CCMHOSTNAME= with its port, labs side by side (`init --free-ports`,
`status` telling this lab from another one), device names, the agent's exit lines, the --help texts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from cmglab.agent.device import Device
from cmglab.core.labconfig import Ports
from cmglab.runtime.lab import Lab
from cmglab.tools.labports import pick_free_ports
from cmglab.tools.processes import SERVICES, LabProcesses, isolated_lab

README = Path(__file__).resolve().parents[1] / "README.md"
WIDTHS = ("80", "50", None)  # None: a pipe with no COLUMNS (rich then draws 80 columns)


def run(*argv: str, columns: str | None = "80", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns:
        env["COLUMNS"] = columns
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def cmglab(*args: str, columns: str | None = "80") -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "cmglab", *args, columns=columns)


def fits(text: str, width: int = 80) -> None:
    assert all(len(line) <= width for line in text.splitlines()), text


# not lab_fixture: the lab a newcomer makes with `cmglab init --free-ports`, no services started here
@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    path = tmp_path_factory.mktemp("newcomer") / "lab"
    made = cmglab("init", "--lab", str(path), "--free-ports")
    assert made.returncode == 0, made.stdout + made.stderr
    return Lab.load(path)


@pytest.mark.parametrize("columns", WIDTHS)
def test_info_values_are_whole_at_any_width(lab: Lab, columns: str | None) -> None:
    facts = json.loads(cmglab("info", "--json", "--lab", str(lab.dir)).stdout)
    out = cmglab("info", "--lab", str(lab.dir), columns=columns)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    values = [facts["cmg_hostname"], facts["ca_bundle"], facts["admin_token_file"]]
    for tenant in facts["tenants"]:
        values += [tenant["tenant_id"]] + [v for u in tenant["users"] for v in (u["upn"], u["password"])]
    values += [a["password"] for a in facts["domain_accounts"]]
    values += [s["url"] for s in facts["services"].values()]
    for value in values:  # each on one line, whole: what a user copies
        assert any(value in line for line in lines), (value, out.stdout)
    assert "…" not in out.stdout
    if columns == "50":  # too narrow for the tables: one record per block, no border to cut through
        assert re.search(r"^\s+password: Lab-\S+$", out.stdout, re.MULTILINE), out.stdout


def test_info_gives_ccmhostname_with_its_port_and_json_has_every_service(lab: Lab) -> None:
    out = cmglab("info", "--lab", str(lab.dir)).stdout
    expected = f"cmg.lab.test:{lab.config.ports.cmg}/CCM_Proxy_MutualAuth/{lab.config.site.role_id}"
    assert f"CMG host name (CCMHOSTNAME=): {expected}" in out
    assert "0x80072EFD" in out  # what a missing port looks like on the client
    facts = json.loads(cmglab("info", "--json", "--lab", str(lab.dir)).stdout)
    assert facts["cmg_hostname"] == expected
    assert facts["services"]["console"]["url"] == f"https://console.lab.test:{lab.config.ports.console}"
    assert facts["services"]["cmg-connection-point"]["port"] == lab.config.ports.cmg_connection_point


@pytest.mark.parametrize("columns", WIDTHS)
def test_bulk_token_list_shows_whole_guids(lab: Lab, columns: str | None) -> None:
    made = json.loads(cmglab("bulk-token", "new", "--json", "--lab", str(lab.dir)).stdout)
    out = cmglab("bulk-token", "list", "--lab", str(lab.dir), columns=columns)
    assert out.returncode == 0
    assert made["guid"] in out.stdout and "…" not in out.stdout
    fits(out.stdout, int(columns or 80))
    listed = json.loads(cmglab("bulk-token", "list", "--json", "--lab", str(lab.dir)).stdout)
    assert made["guid"] in {r["guid"] for r in listed}
    # the GUID as printed is what `block` takes
    blocked = cmglab("bulk-token", "block", made["guid"], "--lab", str(lab.dir))
    assert blocked.returncode == 0 and f"{made['guid']} blocked" in blocked.stdout


@pytest.mark.parametrize("columns", WIDTHS)
def test_pki_show_shows_whole_names_and_thumbprints(lab: Lab, columns: str | None) -> None:
    assert cmglab("pki", "issue-client", "device-with-a-long-name-02", "--lab", str(lab.dir)).returncode == 0
    rows = json.loads(cmglab("pki", "show", "--json", "--lab", str(lab.dir)).stdout)
    out = cmglab("pki", "show", "--lab", str(lab.dir), columns=columns).stdout
    for r in rows:
        assert r["name"] in out.split() or f"name: {r['name']}" in out, r["name"]
        assert r["thumbprint"] in out
    assert "…" not in out
    assert cmglab("pki", "revoke", "device-with-a-long-name-02", "--lab", str(lab.dir)).returncode == 0


def test_free_ports_give_each_lab_its_own_ports(lab: Lab, tmp_path: Path) -> None:
    """A second lab beside a running first one: the first lab's ports are held (as its services would hold
    them), so the kernel never offers them again; an idle lab's ports can be offered twice, by design."""
    other = tmp_path / "second"
    mine = lab.config.ports.model_dump()
    with ExitStack() as held:
        for port in mine.values():
            s = held.enter_context(socket.socket())
            with contextlib.suppress(OSError):  # already taken by someone else: held just the same
                s.bind(("127.0.0.1", port))
                s.listen()
        made = cmglab("init", "--lab", str(other), "--free-ports")
    assert made.returncode == 0, made.stderr
    theirs = Lab.load(other).config.ports.model_dump()
    assert set(mine.values()).isdisjoint(theirs.values()) and len(set(theirs.values())) == len(theirs)
    hosts = (other / "hosts").read_text()
    assert f"cmg.lab.test:{theirs['cmg']}:127.0.0.1" in hosts and f":{Ports().cmg}:" not in hosts
    # on an existing lab: new ports, the rest (PKI, admin token) kept
    token = (other / "admin-token").read_text()
    again = cmglab("init", "--lab", str(other), "--free-ports")
    assert again.returncode == 0 and (other / "admin-token").read_text() == token
    assert Lab.load(other).config.ports.model_dump() != theirs
    assert isinstance(pick_free_ports(), Ports)


def test_status_exits_non_zero_when_down_and_tells_another_lab_from_its_own(tmp_path: Path) -> None:
    # a lab on ports this process reserved, not the `init --free-ports` one: those were free when picked and may
    # be taken before its services start here (LabProcesses hands a reserved port's socket to its service)
    lab = isolated_lab(tmp_path / "first")
    down = cmglab("status", "--json", "--lab", str(lab.dir))
    assert down.returncode == 1
    assert {v["health"] for v in json.loads(down.stdout).values()} == {"down (nothing listens)"}
    # a second lab configured on the first lab's ports: what answers there is not the second lab
    second = tmp_path / "second"
    assert cmglab("init", "--lab", str(second)).returncode == 0
    other = Lab.load(second)
    from cmglab.tools.labports import use_ports

    use_ports(other, lab.config.ports)
    with LabProcesses(lab) as procs:
        procs.ensure("pki", "entra")
        own = json.loads(cmglab("status", "--json", "--lab", str(lab.dir)).stdout)
        assert own["pki"]["health"] == own["entra"]["health"] == "healthy"
        theirs = cmglab("status", "--lab", str(second))
        assert theirs.returncode == 1
        states = json.loads(cmglab("status", "--json", "--lab", str(second)).stdout)
    assert states["pki"]["health"] == f"another lab answers (its lab ID is {lab.lab_id()})", states
    assert states["entra"]["health"] == "another lab answers (certificate not from this lab's CA)", states
    assert "another lab answers" in theirs.stdout and "┃ service" in theirs.stdout  # a table, 80 columns
    fits(theirs.stdout)


def test_device_names_default_to_the_device_directory(tmp_path: Path) -> None:
    assert Device.create(tmp_path / "device01").info.name == "DEVICE01"
    assert Device.create(tmp_path / "my_lab.box-number-seventeen").info.name == "MY-LAB-BOX-NUMB"
    assert Device.create(tmp_path / "x", name="lab99").info.name == "LAB99"
    assert "--name" in README.read_text()


def test_ccmsetup_says_why_it_failed(lab: Lab, tmp_path: Path) -> None:
    home = str(tmp_path / "device01")
    assert cmglab("device", "create", "--lab", str(lab.dir), "--home", home).returncode == 0
    role = lab.config.site.role_id
    r = run(
        sys.executable,
        "-m",
        "cmglab.agent.ccmsetup",
        "--home",
        home,
        f"CCMHOSTNAME=cmg.lab.test:{lab.config.ports.cmg}/CCM_Proxy_MutualAuth/{role}",
        "SMSSITECODE=MEM",
    )
    assert r.returncode == 6
    assert re.fullmatch(
        r"ccmsetup: exit code 6: CcmSetup failed: the WPJ certificate is not found; log \S+"
        r"ccmsetup\.log\n",
        r.stderr,
    ), r.stderr


def test_help_texts(lab: Lab) -> None:
    status = cmglab("status", "--help").stdout
    assert "--json" in status and '"health"' in status
    issue = " ".join(cmglab("pki", "issue-client", "--help").stdout.split())
    assert "pki revoke NAME" in issue.replace("`", "").replace("│", "").replace("  ", " ")
    up = " ".join(cmglab("up", "--help").stdout.replace("│", " ").split())
    assert f"{len(SERVICES)} service processes" in up and "four" not in up
    words = {6: "six", 7: "seven", 8: "eight"}
    assert f"starts its {words[len(SERVICES)]} service" in " ".join(README.read_text().split())
    dsreg = run(sys.executable, "-m", "cmglab.agent.dsregcmd", "--help").stdout
    assert "/join" in dsreg and "--join" not in dsreg and "/status" in dsreg
    assert "dsregcmd /join --home" in README.read_text()


@pytest.mark.parametrize("columns", WIDTHS)
def test_content_list_shows_whole_content_ids(lab: Lab, tmp_path: Path, columns: str | None) -> None:
    payload = tmp_path / "tool.exe"
    payload.write_bytes(b"MZ" + b"\0" * 100)
    added = cmglab(
        "content",
        "add",
        str(payload),
        "--name",
        "A tool with a long descriptive name",
        "--application",
        "--lab",
        str(lab.dir),
    )
    assert added.returncode == 0, added.stderr
    rows = json.loads(cmglab("content", "list", "--json", "--lab", str(lab.dir)).stdout)
    out = cmglab("content", "list", "--lab", str(lab.dir), columns=columns).stdout
    for r in rows:
        assert r["package_id"] in out and r["content_version"] in out, (r, out)
    assert "…" not in out
