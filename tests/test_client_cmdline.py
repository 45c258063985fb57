"""ccmsetup's command line: the real grammar, the lab options, clear errors, the exit codes."""

from __future__ import annotations

import pytest

from cmglab.agent.ccm.state import ManagementPoint
from cmglab.agent.ccmsetup import main
from cmglab.agent.ccmsetup.cmdline import CommandLineError, ExitCode, parse


def test_exit_codes_are_ccmsetups() -> None:
    assert [int(c) for c in ExitCode] == [0, 6, 7, 8, 9, 10]


def test_seed_command_lines_parse() -> None:
    a = parse(['CCMHOSTNAME="CMG.CLOUDAPP.NET/CCM_Proxy_MutualAuth/72186325152220500"', 'SMSSITECODE="MEM"'])
    assert a.ccmhostname == "CMG.CLOUDAPP.NET/CCM_Proxy_MutualAuth/72186325152220500"
    assert a.site_code == "MEM"
    b = parse(
        [
            "/mp:https://CONTOSO.CLOUDAPP.NET/CCM_Proxy_MutualAuth/72186325152220500",
            "CCMHOSTNAME=CONTOSO.CLOUDAPP.NET/CCM_Proxy_MutualAuth/72186325152220500",
            "SMSSiteCode=ABC",
            "/regtoken:eyJ0eXAi.eyJTQ0NN.sig",
            "/NoCRLCheck",
            "/retry:5",
            "SMSMP=https://mp.contoso.com",
        ]
    )
    assert b.mp == ["https://CONTOSO.CLOUDAPP.NET/CCM_Proxy_MutualAuth/72186325152220500"]
    assert b.regtoken == "eyJ0eXAi.eyJTQ0NN.sig" and b.nocrlcheck and b.retry_minutes == 5
    assert b.site_code == "ABC" and b.prop("SMSMP") == "https://mp.contoso.com"
    c = parse(
        [
            "/usepkicert",
            "/uninstall",
            "AADTENANTID=t",
            "AADCLIENTAPPID=c",
            "AADRESOURCEURI=https://x",
            "--home",
            "/tmp/d",
            "--resolve",
            "a:1:127.0.0.1",
            "--resolve=b:2:127.0.0.1",
        ]
    )
    assert c.usepkicert and c.uninstall and c.home == "/tmp/d" and c.resolve == ["a:1:127.0.0.1", "b:2:127.0.0.1"]


def test_the_bulk_token_is_redacted() -> None:
    a = parse(["CCMHOSTNAME=cmg/CCM_Proxy_MutualAuth/1", "/regtoken:SECRETTOKEN"])
    assert "SECRETTOKEN" not in a.redacted() and "/regtoken:<redacted 11 characters>" in a.redacted()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["/bogus"], "unknown parameter '/bogus'"),
        (["FOO=bar"], "unknown property 'FOO'"),
        (["/mp"], "needs a value"),
        (["/nocrlcheck:1"], "takes no value"),
        (["/mp:cmg.lab.test"], "must be a URL"),
        (["CCMHOSTNAME=https://cmg/CCM_Proxy_MutualAuth/1"], "without https://"),
        (["/regtoken:x"], "needs CCMHOSTNAME"),
        (["/retry:soon"], "number of minutes"),
        (["stray"], "unexpected argument"),
        (["--bogus"], "unknown option"),
    ],
)
def test_unknown_or_bad_arguments_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(CommandLineError, match=message):
        parse(argv)


def test_main_exits_6_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["/bogus"]) == 6
    assert "unknown parameter '/bogus'" in capsys.readouterr().err


def test_main_without_a_device_is_a_prerequisite_failure(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--home", str(tmp_path / "none"), "CCMHOSTNAME=cmg/CCM_Proxy_MutualAuth/1"]) == 9
    assert "cmglab device create" in capsys.readouterr().err


def test_management_point_names() -> None:
    mp = ManagementPoint.from_ccmhostname("cmg.lab.test:8444/CCM_Proxy_MutualAuth/72057594037927939")
    assert mp.internet and mp.token_auth and mp.port == 8444
    assert mp.path("CCM_STS") == "/CCM_Proxy_ServerAuth/72057594037927939/CCM_STS"
    assert mp.display_url == "https://cmg.lab.test:8444/CCM_Proxy_MutualAuth/72057594037927939"
    pki = ManagementPoint.from_url("https://cmg.lab.test/CCM_Proxy_MutualAuth/5", pki=True)
    assert pki.path("ccm_system/request") == "/CCM_Proxy_MutualAuth/5/ccm_system/request" and not pki.token_auth
    intranet = ManagementPoint.from_url("http://mp.corp.lab.test:8080")
    assert not intranet.internet and intranet.path("ccm_system/request") == "/ccm_system/request"
    with pytest.raises(ValueError):
        ManagementPoint.from_ccmhostname("cmg.lab.test")
