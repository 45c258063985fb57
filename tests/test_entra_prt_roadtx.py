"""Primary refresh tokens with ROADtools roadtx, unmodified, under the real Entra names (as
tests/test_entra_roadtx.py runs it): `roadtx prt` (password), `roadtx prtauth`, `roadtx prt -a renew`, and
the PRT cookie at the authorize endpoint (`roadtx gettokens --prt ... --prt-sessionkey ...`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cmglab.runtime.lab import Lab
from tests.support.entra_device import CONFIGMGR_CLIENT, DRS_RESOURCE, claims
from tests.support.roadtx import Roadtx, roadtx_fixture

pytestmark = pytest.mark.netns

CONFIGMGR = "https://ConfigMgrService"


roadtx = roadtx_fixture("roadtx-prt")


def prtauth(
    roadtx: Roadtx, joined: Path, tokenfile: str, *prt: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """`roadtx prtauth` for ConfigMgr into `tokenfile`, with the device's PRT (or the one `prt` names)."""
    return roadtx(
        "prtauth",
        *prt,
        "-c",
        CONFIGMGR_CLIENT,
        "-r",
        CONFIGMGR,
        "-ru",
        "https://login.microsoftonline.com/common/oauth2/nativeclient",
        "--tokenfile",
        tokenfile,
        cwd=joined,
        ok=ok,
    )


@pytest.fixture(scope="module")
def joined(roadtx: Roadtx, lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device joined with roadtx (its key is also its transport key, as roadtx registers it)."""
    where = tmp_path_factory.mktemp("prt-device")
    alice = lab.config.primary_tenant.users[0]
    roadtx("gettokens", "-u", alice.upn, "-p", alice.password, "-r", DRS_RESOURCE, cwd=where)
    roadtx("device", "-a", "join", "-n", "LAB-PRT", cwd=where)
    return where


def test_roadtx_prt_prtauth_renew(roadtx: Roadtx, joined: Path, lab: Lab) -> None:
    alice, tid = lab.config.primary_tenant.users[0], lab.config.primary_tenant.tenant_id
    out = roadtx(
        "prt", "-u", alice.upn, "-p", alice.password, "-c", "lab-prt.pem", "-k", "lab-prt.key", cwd=joined
    ).stdout
    assert "Obtained PRT:" in out and "Obtained session key:" in out, out
    prt = json.loads((joined / "roadtx.prt").read_text())
    assert prt["token_type"] == "pop" and prt["refresh_token_expires_in"] == 14 * 24 * 3600
    assert len(bytes.fromhex(prt["session_key"])) == 32
    id_token = claims(prt["id_token"])
    assert (
        id_token["upn"] == alice.upn
        and id_token["tid"] == tid
        and id_token["aud"] == "38aa3b87-a06d-4817-b275-7a316988d93b"
    )

    # a token for ConfigMgr with the PRT (the request signed with the derived key, the reply a JWE)
    prtauth(roadtx, joined, "cm.json")
    token = claims(json.loads((joined / "cm.json").read_text())["accessToken"])
    assert token["aud"] == CONFIGMGR and token["upn"] == alice.upn and token["deviceid"]
    assert token["amr"] == ["pwd", "rsa"] and token["appid"] == CONFIGMGR_CLIENT

    # renewal: a new PRT, the same session key; the old PRT is retired
    roadtx("prt", "-a", "renew", cwd=joined)
    renewed = json.loads((joined / "roadtx.prt").read_text())
    assert renewed["refresh_token"] != prt["refresh_token"] and renewed["session_key"] == prt["session_key"]
    prtauth(roadtx, joined, "cm2.json")
    old = prtauth(
        roadtx, joined, "cm3.json", "--prt", prt["refresh_token"], "--prt-sessionkey", prt["session_key"], ok=False
    )
    assert "AADSTS9002313" in old.stdout + old.stderr and not (joined / "cm3.json").exists()


def test_roadtx_prt_cookie_at_authorize(roadtx: Roadtx, joined: Path, lab: Lab) -> None:
    """x-ms-RefreshTokenCredential (KDFv1: roadlib's KDFv2 cookie decodes the JWT body as standard base64,
    which loses its '-' and '_' characters) gives a code, then tokens bound to the device."""
    alice = lab.config.primary_tenant.users[0]
    roadtx(
        "prt",
        "-u",
        alice.upn,
        "-p",
        alice.password,
        "-c",
        "lab-prt.pem",
        "-k",
        "lab-prt.key",
        "-f",
        "cookie.prt",
        cwd=joined,
    )
    prt = json.loads((joined / "cookie.prt").read_text())
    roadtx(
        "gettokens",
        "--prt",
        prt["refresh_token"],
        "--prt-sessionkey",
        prt["session_key"],
        "--kdf-v1",
        "-c",
        CONFIGMGR_CLIENT,
        "-r",
        CONFIGMGR,
        "--tokenfile",
        "cookie.json",
        cwd=joined,
    )
    token = claims(json.loads((joined / "cookie.json").read_text())["accessToken"])
    assert token["aud"] == CONFIGMGR and token["upn"] == alice.upn and token["deviceid"]
