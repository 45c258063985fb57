"""Content location for intranet clients: the MP names the distribution point first; ccmsetup downloads the
client package from it and ccmexec a deployed package (ContentTransferManager, DataTransferService), each
file checked against the content library's hash; Windows authentication as the computer account."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cmglab.runtime.contentlib import ContentLibrary
from cmglab.runtime.lab import Lab
from tests.support.agent import assert_lines, log_of, new_device, run
from tests.support.client import intranet_ccmsetup, intranet_client
from tests.support.lab import lab_fixture

# clients check the DP certificate's CRL
services = lab_fixture("pki", "management-point", "distribution-point", autouse=True)


def test_intranet_client_installs_and_downloads_from_the_dp(lab: Lab, tmp_path: Path) -> None:
    device = intranet_client(lab, tmp_path / "dev", "LAB01")
    dp_http = f"http://{lab.config.hosts.distribution_point}:{lab.config.ports.distribution_point_http}"
    assert_lines(
        device,
        "ccmsetup.log",
        rf"The location '{dp_http}/SMS_DP_SMSPKG\$/MEM00001' \(SERVER\) was found",
        rf"Downloading the client package from the distribution point '{dp_http}/SMS_DP_SMSPKG\$/MEM00001'",
        r"Downloaded '.*/ccmsetup\.cab' \(\d+ bytes\), SHA-256 matches",
        r"Validated the client package against the ccmsetup manifest",
    )

    library = ContentLibrary(lab.content_dir, lab.config)
    osd = next(p for p in library.packages() if p.name.startswith("Windows 11"))
    r = run("cmglab.agent.ccmexec", "--home", str(device.home), "--download", osd.package_id)
    assert r.returncode == 0, r.stderr + log_of(device, "DataTransferService.log")[-2000:]
    assert_lines(
        device,
        "ContentTransferManager.log",
        rf"Location update: '{dp_http}/SMS_DP_SMSPKG\$/{osd.content_id}' \(SERVER\)",
        rf"started download from '{dp_http}/SMS_DP_SMSPKG\$/{osd.content_id}' for full content download",
        r"successfully processed download completion",
    )
    assert_lines(
        device,
        "DataTransferService.log",
        r"DTSJob \{[0-9A-F-]{36}\} created to download from",
        rf"GetDirectoryList_HTTP\('{dp_http}/SMS_DP_SMSPKG\$/{osd.content_id}'\)",
        r"downloaded 'unattend\.xml' \(\d+ bytes\), SHA-256 [0-9A-F]{64} matches",
        r"successfully completed download",
    )
    dest = Path(r.stdout.split(" downloaded to ", 1)[1].split(":", 1)[0])
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert set(got) == {f.path for f in library.files(osd)}
    for f in library.files(osd):
        assert hashlib.sha256(got[f.path]).hexdigest().upper() == f.sha256
    # the DP saw the computer account, connection-authenticated
    iis = (lab.dir / "logs" / "distribution-point" / "u_ex.log").read_text()
    assert f"/sms_dp_smspkg$/{osd.content_id.lower()}" in iis.lower() and "CORP\\LAB01$" in iis


def test_a_device_without_a_domain_account_is_refused_by_the_dp(lab: Lab, tmp_path: Path) -> None:
    device = new_device(lab.dir, tmp_path / "dev", "--name", "WG01")
    intranet_ccmsetup(lab, device)
    # the DP answers 401 (no computer account): ccmsetup falls back to the MP's CCM_Client
    text = log_of(device, "ccmsetup.log")
    assert "HTTP 401 (access denied); trying the next location" in text, text[-3000:]
    assert "/CCM_Client/ccmsetup.cab" in text


def test_https_dp_takes_the_clients_pki_certificate(lab: Lab, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cmglab.tools.cli import app

    device = intranet_client(lab, tmp_path / "dev", "LAB01", pki_cert=True)
    assert CliRunner().invoke(app, ["content", "dp", "--https", "--lab", str(lab.dir)]).exit_code == 0
    try:
        r = run("cmglab.agent.ccmexec", "--home", str(device.home), "--download", "MEM00002")
        assert r.returncode == 0, r.stderr + log_of(device, "DataTransferService.log")[-2000:]
        dp_https = f"https://{lab.config.hosts.distribution_point}:{lab.config.ports.distribution_point}"
        assert_lines(
            device,
            "ContentTransferManager.log",
            rf"started download from '{dp_https}/SMS_DP_SMSPKG\$/MEM00002' for full content download",
        )
    finally:
        assert CliRunner().invoke(app, ["content", "dp", "--http", "--lab", str(lab.dir)]).exit_code == 0
