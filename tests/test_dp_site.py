"""The DP's properties as the console sets them, changed on the running DP with `cmglab content dp`:
"Allow clients to connect anonymously" and HTTPS (SSL required, PKI client certificates; the
NOCERT_SMS_DP_SMSPKG$ vdir without them), answered as IIS does (403.4, 403.7) and as SCCMSecrets reads it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cmglab.runtime.lab import Lab
from cmglab.tools.cli import app
from cmglab.wire import httpclient
from tests.support.lab import lab_fixture


def dp_set(lab: Lab, *flags: str) -> None:
    result = CliRunner().invoke(app, ["content", "dp", *flags, "--lab", str(lab.dir)])
    assert result.exit_code == 0, result.output


dp = lab_fixture("management-point", "distribution-point")  # the MP builds the client package


@pytest.fixture()
def anonymous_https(dp: Lab) -> Iterator[Lab]:
    dp_set(dp, "--anonymous", "--https")
    try:
        yield dp
    finally:
        dp_set(dp, "--no-anonymous", "--http")


def https_client(lab: Lab, cert: tuple[Path, Path] | None = None) -> httpx.Client:
    ctx = httpclient.ssl_context(ca_bundle=lab.pki.ca_bundle, client_cert=cert)
    return httpx.Client(verify=ctx, timeout=10)


def test_https_site_requires_ssl_and_client_certificates(anonymous_https: Lab) -> None:
    lab = anonymous_https
    http = f"http://127.0.0.1:{lab.config.ports.distribution_point_http}"
    https = f"https://127.0.0.1:{lab.config.ports.distribution_point}"
    r = httpx.get(f"{http}/sms_dp_smspkg$/Datalib")
    assert r.status_code == 403 and "403 - Forbidden: Access is denied." in r.text  # 403.4 SSL required
    with https_client(lab) as c:
        r = c.get(f"{https}/sms_dp_smspkg$/abcdefgh")
        assert r.status_code == 403 and "Client certificate required" in r.text  # SCCMSecrets: CLIENTCERT
        r = c.get(f"{https}/nocert_sms_dp_smspkg$/abcdefgh")
        assert r.status_code == 404  # SCCMSecrets --nocert: "anonymous DP access enabled"
        r = c.get(f"{https}/nocert_sms_dp_smspkg$/Datalib")
        assert r.status_code == 200 and "MEM00001.1" in r.text
    ident = lab.pki.issue_client("dp-site-test")
    with https_client(lab, (ident.cert_path, ident.key_path)) as c:
        r = c.get(f"{https}/sms_dp_smspkg$/Datalib")
        assert r.status_code == 200 and "MEM00001.1" in r.text
        dp_set(lab, "--no-anonymous")
        r = c.get(f"{https}/sms_dp_smspkg$/Datalib")
        assert r.status_code == 401  # certificate and Windows authentication both
    log = (lab.dir / "logs" / "distribution-point" / "u_ex.log").read_text()
    assert " 403 4 " in log and " 403 7 " in log
