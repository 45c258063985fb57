"""The site setting "Clients check the certificate revocation list (CRL) for site systems" reaches the clients:
the MP sends it in the site information (`SecurityModeMaskEx` bit 0x20, IISSSLState's CRL bit), the client
follows it from its next site information, and ccmsetup's /nocrlcheck still overrides it.

End to end in a lab of its own (the test revokes the distribution point's certificate): an intranet client
(HTTP MP, HTTPS DP) refuses the revoked DP certificate while the site checks CRLs, and proceeds once
`cmglab site set crl-check false` applies on the running lab."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import fromstring

import pytest

from cmglab.agent.ccm.state import ClientState
from cmglab.agent.device import Device
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from cmglab.wire import site_security
from tests.support.agent import log_of, run
from tests.support.client import intranet_client
from tests.support.lab import new_lab


def site(mask: int | None) -> object:
    inner = "" if mask is None else f"<SecurityModeMaskEx>{mask}</SecurityModeMaskEx>"
    return fromstring(f"<Site><SecurityConfiguration>{inner}</SecurityConfiguration></Site>")


def test_the_crl_bit_of_the_site_information() -> None:
    assert site_security.security_mode_mask_ex(True) == 1120 and site_security.security_mode_mask_ex(False) == 1088
    assert site_security.site_checks_crl(site(224)) is True  # type: ignore[arg-type]
    assert site_security.site_checks_crl(site(192)) is False  # type: ignore[arg-type]
    assert site_security.site_checks_crl(site(None)) is None  # type: ignore[arg-type]


def test_https_only_is_in_the_mask() -> None:
    """Communication Security "HTTPS only" (review finding 10): the mask says so, with or without the CRL bit."""
    mask = site_security.security_mode_mask_ex
    assert (mask(False, https_only=True), mask(True, https_only=True)) == (31, 63)
    assert (mask(False, https_only=False), mask(True, https_only=False)) == (1088, 1120)
    assert site_security.site_checks_crl(site(63)) is True  # type: ignore[arg-type]
    assert site_security.site_checks_crl(site(31)) is False  # type: ignore[arg-type]


def test_nocrlcheck_overrides_the_site() -> None:
    log = logging.getLogger("test")
    pinned = ClientState(crl_check=False, nocrlcheck=True)
    pinned.follow_site_crl_setting(True, log)
    assert pinned.crl_check is False
    follows = ClientState()
    follows.follow_site_crl_setting(False, log)
    assert follows.crl_check is False
    follows.follow_site_crl_setting(None, log)  # a reply without the mask changes nothing
    assert follows.crl_check is False
    follows.follow_site_crl_setting(True, log)
    assert follows.crl_check is True


# not lab_fixture: a lab of its own, the test revokes the distribution point's certificate
@pytest.fixture(scope="module")
def crl_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = new_lab(tmp_path_factory.mktemp("crlcheck") / "lab")
    with LabProcesses(lab) as services:  # stopped on every way out
        services.ensure("pki", "management-point", "distribution-point")
        yield lab


def cmglab(lab: Lab, *args: str) -> str:
    r = run("cmglab", *args, "--lab", str(lab.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def download(device: Device) -> tuple[int, str]:
    r = run("cmglab.agent.ccmexec", "--home", str(device.home), "--download", "MEM00002")
    return r.returncode, r.stdout + r.stderr


def test_clients_follow_the_site_crl_setting_live(crl_lab: Lab, tmp_path: Path) -> None:
    lab = crl_lab
    device = intranet_client(lab, tmp_path / "dev", "CRL01", pki_cert=True)
    cmglab(lab, "content", "dp", "--https")
    assert download(device)[0] == 0  # the DP's certificate is good
    assert "revoked" in cmglab(lab, "pki", "revoke", "distribution-point")

    # the site checks CRLs (lab.json's default): the client refuses the revoked DP certificate
    code, out = download(device)
    assert code != 0
    assert "0x80092010" in out, out
    logs = log_of(device, "DataTransferService.log") + log_of(device, "ContentTransferManager.log")
    assert "The certificate is revoked" in logs and "0x80092010" in logs, logs[-3000:]

    # set live: the client takes it with its next site information and proceeds
    cmglab(lab, "site", "set", "crl-check", "false")
    code, out = download(device)
    assert code == 0, out + log_of(device, "DataTransferService.log")[-2000:]
    assert "revocation checking is off" in log_of(device, "LocationServices.log")
    assert ClientState.load(device).crl_check is False  # type: ignore[union-attr]

    # and back on: refused again
    cmglab(lab, "site", "set", "crl-check", "true")
    code, out = download(device)
    assert code != 0 and "0x80092010" in out, out
