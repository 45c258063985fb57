"""The site signer's tokens are PyJWT's own text (issue 20): `SiteSigner._sign` writes the JWS itself (its header
encoded once per signer), and RSA PKCS#1 v1.5 is deterministic, so each kind of token it makes must be byte for
byte what `jwt.encode` makes of the same claims with the same key and header, and must verify as before."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from cmglab.pki.builders import name as x509_name
from cmglab.pki.builders import new_key, self_signed, x5t
from cmglab.wire import site_tokens

HIERARCHY = "5b6e9a54-4a1f-4c3e-9a43-3d1c1b0c2f11"


@pytest.fixture(scope="module")
def signer() -> site_tokens.SiteSigner:
    key = new_key()
    return site_tokens.SiteSigner(HIERARCHY, key, self_signed(key, x509_name("Site Signing"), ekus=[]))


def _pyjwt(signer: site_tokens.SiteSigner, token: str) -> str:
    claims = site_tokens.claims_of(token)
    return jwt.encode(claims, signer.key, algorithm="RS256", headers={"typ": "JWT", "x5t": x5t(signer.cert)})


@pytest.mark.parametrize(
    "make",
    [
        lambda s: s.ccm_token(token_type=site_tokens.DEVICE)[0],
        lambda s: s.ccm_token(token_type=site_tokens.DEVICE, sms_id="GUID:6C0A1B2C-0000-4000-8000-000000000001")[0],
        lambda s: s.ccm_token(
            token_type=site_tokens.UDA,
            sms_id="GUID:6C0A1B2C-0000-4000-8000-000000000002",
            tenant_id="aaaaaaaa-0000-0000-0000-00000000000a",
            user_id="uuuuuuuu-0000-0000-0000-000000000001",
            device_id="dddddddd-0000-0000-0000-000000000001",
            user_sid="S-1-5-21-1-2-3-1001",
            lifetime=timedelta(minutes=5),
        )[0],
        lambda s: s.client_token(sms_id="GUID:6C0A1B2C-0000-4000-8000-000000000003", cert_thumbprint="AB" * 20)[0],
        lambda s: s.bulk_token(minutes=60)[0],
    ],
    ids=["ccm-device", "ccm-registered", "ccm-uda", "client", "bulk"],
)
def test_a_site_token_is_pyjwts_text_and_verifies(signer: site_tokens.SiteSigner, make: object) -> None:
    token = make(signer)  # type: ignore[operator]
    assert token == _pyjwt(signer, token)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "JWT", "x5t": x5t(signer.cert)}
    claims = site_tokens.verify(token, cert=signer.cert, hierarchy_id=HIERARCHY)
    assert claims == site_tokens.claims_of(token)


def test_another_site_does_not_verify_it(signer: site_tokens.SiteSigner) -> None:
    token, _ = signer.ccm_token(token_type=site_tokens.DEVICE)
    other_key = new_key()
    other = site_tokens.SiteSigner(HIERARCHY, other_key, self_signed(other_key, x509_name("Site Signing"), ekus=[]))
    with pytest.raises(site_tokens.SiteTokenError):
        site_tokens.verify(token, cert=other.cert, hierarchy_id=HIERARCHY)
