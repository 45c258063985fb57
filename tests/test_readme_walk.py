"""What a newcomer following the README meets (the walk-through of README.md): `cmglab init --free-ports`
makes a lab whose certificates name the CRL host where it really listens, so `dsregcmd /join` can check
revocation on a lab beside another one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from cmglab.runtime.lab import Lab
from cmglab.runtime.sockets import reserve_ports


def cmglab(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "cmglab", *args], capture_output=True, text=True, timeout=120, env=env)


def crl_and_aia_ports(cert_file: Path) -> set[int]:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = [n.value for dp in cdp for n in dp.full_name or []] + [d.access_location.value for d in aia]
    assert urls and all(u.startswith("http://pki.lab.test:") for u in urls), urls
    return {int(u.split(":")[2].split("/")[0]) for u in urls}


def test_free_ports_lab_certificates_name_its_crl_host(tmp_path: Path) -> None:
    made = cmglab("init", "--lab", str(tmp_path / "lab"), "--free-ports")
    assert made.returncode == 0, made.stdout + made.stderr
    lab = Lab.load(tmp_path / "lab")
    pki_port = lab.config.ports.pki
    assert pki_port != 8081
    for service in ("entra", "cmg"):
        assert crl_and_aia_ports(lab.dir / "pki" / service / f"{service}.crt") == {pki_port}
    assert f"pki.lab.test:{pki_port}:127.0.0.1" in (lab.dir / "hosts").read_text()
    # an existing lab moves its other ports, and the CRL host stays where its certificates say
    again = cmglab("init", "--lab", str(lab.dir), "--free-ports")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"pki keeps port {pki_port}" in again.stdout
    moved = Lab.load(lab.dir).config.ports
    assert moved.pki == pki_port and moved.cmg != lab.config.ports.cmg


def test_init_force_starts_from_a_clean_state(tmp_path: Path) -> None:
    """`cmglab init --force` remakes the tenant and its users: Entra seeded from the old lab.json once
    crashed on start (UNIQUE constraint failed: users.upn) and `cmglab up` waited 60 s for it."""
    from cmglab.tools.processes import LabProcesses

    made = cmglab("init", "--lab", str(tmp_path / "lab"), "--free-ports")
    assert made.returncode == 0, made.stdout + made.stderr
    with LabProcesses(entra_on_a_reserved_port(tmp_path / "lab")) as procs:
        procs.ensure("entra")
    assert (tmp_path / "lab" / "data" / "entra.db").exists()
    again = cmglab("init", "--lab", str(tmp_path / "lab"), "--free-ports", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not (tmp_path / "lab" / "data" / "entra.db").exists()
    with LabProcesses(entra_on_a_reserved_port(tmp_path / "lab")) as procs:
        procs.ensure("entra")  # raises ServiceFailed if Entra cannot start


def entra_on_a_reserved_port(lab_dir: Path) -> Lab:
    """The lab with Entra moved to a port this process reserved (LabProcesses hands its socket to Entra): the
    one `init --free-ports` picked was free then, and another program may take it before Entra binds it."""
    from cmglab.tools.labports import use_ports

    lab = Lab.load(lab_dir)
    use_ports(lab, lab.config.ports.model_copy(update={"entra": reserve_ports(1)[0]}))
    return Lab.load(lab_dir)


def test_dsregcmd_status_into_a_closed_pipe_prints_no_traceback(tmp_path: Path) -> None:
    """`dsregcmd /status | head` once ended in a BrokenPipeError traceback."""
    made = cmglab("init", "--lab", str(tmp_path / "lab"), "--free-ports")
    assert made.returncode == 0, made.stdout + made.stderr
    home = tmp_path / "device01"
    created = cmglab("device", "create", "--lab", str(tmp_path / "lab"), "--home", str(home))
    assert created.returncode == 0, created.stdout + created.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before dsregcmd writes: as `| head` after its lines
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cmglab.agent.dsregcmd", "/status", "--home", str(home)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_readme_layout_matches_the_packages_and_draws_one_diagram() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = {line.split("/")[1] for line in layout.splitlines() if line.startswith("cmglab/")}
    package_root = Path(__file__).resolve().parents[1] / "cmglab"
    packages = {p.name for p in package_root.iterdir() if (p / "__init__.py").exists()}
    assert listed == packages
    blocks = readme.split("```")[1::2]
    assert sum("──▶" in b for b in blocks) == 1  # the one architecture diagram ("What runs")


def test_a_service_process_output_is_its_own_run_only(tmp_path: Path) -> None:
    """`cmglab up` once answered a failed start with the previous run's lines from the appended
    `<lab>/logs/processes/<service>.out` ("entra listening on ..."), which hid the real error."""
    from cmglab.tools.processes import LabProcesses, isolated_lab

    lab = isolated_lab(tmp_path / "lab")
    out = lab.dir / "logs" / "processes" / "pki.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("an earlier run: pki listening on http://127.0.0.1:1\n")
    with LabProcesses(lab) as procs:
        procs.ensure("pki")
        mine = procs.procs["pki"].output()
    assert "pki listening on" in mine and "an earlier run" not in mine, mine
    assert "an earlier run" in out.read_text()  # the file keeps every run's output


def test_top_level_help_texts_have_no_line_breaks_inside_a_paragraph() -> None:
    """`cmglab --help` prints a help text's line breaks where they fall ("...held connections and" then
    "profiles" alone on the next line, at 80 columns)."""
    import re

    import typer

    from cmglab.tools.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        text = (command.help or "").strip()
        assert not re.search(r"[^\n]\n[^\n]", text), f"cmglab {name}: {text!r}"


def test_content_add_counts_one_file_in_the_singular(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    assert cmglab("init", "--lab", str(lab_dir), "--free-ports").returncode == 0
    (tmp_path / "Map-Drives.ps1").write_text("net use S: \\\\fs01\\share\n")
    added = cmglab("content", "add", str(tmp_path / "Map-Drives.ps1"), "--name", "Logon script", "--lab", str(lab_dir))
    assert added.returncode == 0, added.stdout + added.stderr
    assert ", 1 file\n" in added.stdout and "1 files" not in added.stdout, added.stdout


def test_console_output_is_not_a_line_per_poll(tmp_path: Path) -> None:
    """The console's collector polls each service every second; its process output once logged each poll
    (`httpx INFO HTTP Request: ...`), 780 KB in 12 minutes of an idle lab."""
    import time

    from cmglab.tools.processes import LabProcesses, isolated_lab

    lab = isolated_lab(tmp_path / "lab")
    with LabProcesses(lab) as procs:
        procs.ensure("pki", "console")
        deadline = time.monotonic() + 30
        with procs.client() as c:
            while True:  # until the collector has polled the CRL host: the static view shows it healthy
                page = c.get(f"{lab.url('console')}/?static=1").text
                polled = "http://pki.lab.test" in page and "healthy" in page.split("http://pki.lab.test")[0][-300:]
                if polled or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        assert polled, page
        output = procs.procs["console"].output()
    assert "console listening on" in output and "HTTP Request:" not in output, output[-2000:]


def test_up_detach_names_the_lab_in_its_down_command(tmp_path: Path) -> None:
    """`cmglab up --detach --lab DIR` said "stop it with cmglab down", which stops ./.cmglab, not DIR."""
    from cmglab.runtime.sockets import handover
    from cmglab.tools import orchestrate
    from cmglab.tools.processes import isolated_lab

    lab = isolated_lab(tmp_path / "lab")
    try:
        with handover("127.0.0.1") as (env, fds):  # the ports this test reserved, passed on to the services
            up = subprocess.run(
                [sys.executable, "-m", "cmglab", "up", "--detach", "--lab", str(lab.dir)],
                capture_output=True,
                text=True,
                timeout=240,
                pass_fds=fds,
                env={**os.environ, "COLUMNS": "80", **env},
            )
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"stop it with cmglab down --lab {lab.dir}\n" in up.stdout, up.stdout
        down = cmglab("down", "--lab", str(lab.dir))
        assert down.returncode == 0, down.stdout + down.stderr
        assert orchestrate.running_pids(lab) == {}
    finally:
        orchestrate.stop_pids(lab, timeout=5)


def test_ports_edited_in_lab_json_move_the_lab_names_and_a_moved_crl_host_is_named(tmp_path: Path) -> None:
    """lab.json's ports edited by hand, then `cmglab init` (or `up`): the hosts file kept each name's old
    mapping beside the new one, and the agent, which takes a name's lowest mapped port, joined Entra on the old
    port (0x80072EFD). A moved CRL host is one the lab's certificates do not name: init says so and how to mend
    it, and after `cmglab pki init --force` they name the new port."""
    import json

    from cmglab.agent.entra import base_url

    lab_dir = tmp_path / "lab"
    assert cmglab("init", "--lab", str(lab_dir), "--free-ports").returncode == 0
    config = json.loads((lab_dir / "lab.json").read_text())
    free = reserve_ports(len(config["ports"]))
    config["ports"] = dict(zip(config["ports"], free, strict=True))
    (lab_dir / "lab.json").write_text(json.dumps(config))
    again = cmglab("init", "--lab", str(lab_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    lab = Lab.load(lab_dir)
    lines = (lab_dir / "hosts").read_text().splitlines()
    assert sorted(lines) == sorted(lab.loopback_resolve()), lines  # each lab name at lab.json's ports only
    assert base_url("login.microsoftonline.com", lines) == f"https://login.microsoftonline.com:{lab.port('entra')}"
    said = " ".join(again.stdout.split())
    assert f"lab.json puts the CRL host at http://pki.lab.test:{lab.config.ports.pki}, but" in said, said
    assert f"cmglab pki init --force --lab {lab_dir}" in said and "0x80092013" in said, said
    assert cmglab("pki", "init", "--force", "--lab", str(lab_dir)).returncode == 0
    assert crl_and_aia_ports(lab_dir / "pki" / "cmg" / "cmg.crt") == {lab.config.ports.pki}
    assert "revocation checks fail" not in cmglab("init", "--lab", str(lab_dir)).stdout


def test_a_replica_mapping_added_by_hand_survives_init(tmp_path: Path) -> None:
    """README "Scale-out" adds `cmg.lab.test:10141:127.0.0.2` to the hosts file, then runs `cmglab up`: the
    mapping of a lab name at a port lab.json does not give stays while nothing of that name moved."""
    lab_dir = tmp_path / "lab"
    assert cmglab("init", "--lab", str(lab_dir), "--free-ports").returncode == 0
    lab = Lab.load(lab_dir)
    replica = f"cmg.lab.test:{lab.config.ports.cmg_connector + 1}:127.0.0.2"
    with (lab_dir / "hosts").open("a") as f:
        f.write(f"{replica}\n")
    assert cmglab("init", "--lab", str(lab_dir)).returncode == 0
    assert replica in (lab_dir / "hosts").read_text().splitlines()


def test_a_mistyped_device_or_an_unusable_lab_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """`cmglab device repair root-ca --home DIR` (the troubleshooting table's remedy) with a DIR that holds no
    device, and `cmglab up` on a lab.json of another cmglab version, printed a 25- and a 60-line traceback."""
    import json

    lab_dir = tmp_path / "lab"
    assert cmglab("init", "--lab", str(lab_dir), "--free-ports").returncode == 0
    for args in (("repair", "root-ca"), ("break", "crl"), ("enrol",)):
        r = cmglab("device", *args, "--home", str(tmp_path / "no-such-device"), "--lab", str(lab_dir))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().startswith("cmglab device: no device at") and len(r.stderr.splitlines()) == 1
    config = json.loads((lab_dir / "lab.json").read_text())
    (lab_dir / "lab.json").write_text(json.dumps({**config, "version": 99}))
    for args in (("up",), ("site", "show"), ("bulk-token", "list")):
        r = cmglab(*args, "--lab", str(lab_dir))
        printed = r.stdout + r.stderr
        assert r.returncode == 2 and "Traceback" not in printed, printed
        assert len(printed.strip().splitlines()) == 1 and "cmglab init --force" in printed, printed
