"""What Entra remembers between requests (issue 20) and what it still checks on every one: a device certificate's CA
signature is verified once per certificate text (drs.SignedCertificates), a DRS bearer token once per token text
(Signer.verify). Each test is an attack on what is remembered: the certificate's validity, the request's signature,
the device row and the nonce, the token's lifetime and audience are checked on each request."""

from __future__ import annotations

import base64
import gc
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from cmglab.agent import entra as agent_entra
from cmglab.core.labconfig import CONFIGMGR_CLIENT_APP_ID, CONFIGMGR_RESOURCE_URI
from cmglab.pki import builders as b
from cmglab.runtime.lab import Lab
from cmglab.services.entra import store as st
from cmglab.services.entra import tokens
from cmglab.services.entra.errors import AADSTSError, DRSError
from cmglab.services.entra.grants import TokenRequest
from cmglab.services.entra.parts import Parts
from tests.support.entra_device import new_key, signed_request
from tests.support.entra_units import JoinedDevice, device_token, drs_token, join_device, join_primary_user
from tests.support.lab import new_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("remembered") / "lab")


@pytest.fixture(scope="module")
def entra(lab: Lab) -> Parts:
    return Parts.from_lab(lab)


@pytest.fixture(scope="module")
def joined(lab: Lab, entra: Parts) -> JoinedDevice:
    return join_primary_user(lab, entra)


def _request(lab: Lab, entra: Parts, cert: Any, key: Any, nonce: str | None = None) -> str:
    nonce = nonce or entra.store.issue_nonce(300)
    payload = {
        "request_nonce": nonce,
        "resource": CONFIGMGR_RESOURCE_URI,
        "client_id": CONFIGMGR_CLIENT_APP_ID,
        "grant_type": "device_token",
    }
    return signed_request(cert, key, payload)


def _refused(lab: Lab, entra: Parts, request: str) -> int:
    with pytest.raises(AADSTSError) as refused:
        device_token(lab, entra, request)
    return refused.value.code


def test_a_known_device_certificate_is_still_checked_on_every_request(
    lab: Lab, entra: Parts, joined: JoinedDevice
) -> None:
    signed = entra.grants.device_ca.signed
    x5c = base64.b64encode(b.cert_der(joined.cert)).decode()
    for _ in range(2):  # the second request finds the certificate by its text
        body = device_token(lab, entra, _request(lab, entra, joined.cert, joined.device_key))
        assert jwt.decode(body["access_token"], options={"verify_signature": False})["deviceid"] == joined.device_id
    assert x5c in signed
    # the request's signature: by the device key, per request
    assert _refused(lab, entra, _request(lab, entra, joined.cert, new_key())) == 50155
    # the nonce: single use, per request
    nonce = entra.store.issue_nonce(300)
    device_token(lab, entra, _request(lab, entra, joined.cert, joined.device_key, nonce))
    assert _refused(lab, entra, _request(lab, entra, joined.cert, joined.device_key, nonce)) == 50013
    # the device row: a device disabled after its certificate was known is refused
    with entra.store.session() as s:
        row = st.device_by_id(s, joined.device_id)
        assert row is not None
        row.enabled = False
    try:
        assert _refused(lab, entra, _request(lab, entra, joined.cert, joined.device_key)) == 700003
    finally:
        with entra.store.session() as s:
            row = st.device_by_id(s, joined.device_id)
            assert row is not None
            row.enabled = True
    device_token(lab, entra, _request(lab, entra, joined.cert, joined.device_key))


def test_a_certificate_the_ca_did_not_sign_or_out_of_its_validity_is_refused_each_time(
    lab: Lab, entra: Parts, joined: JoinedDevice
) -> None:
    """Attack: the device's own name and key in a certificate from another CA (refused, never kept), and one the CA
    signed whose validity has ended (kept, since the CA signed it, and refused on every request)."""
    ca = entra.grants.device_ca
    own_ca_key = new_key()
    own_ca = b.self_signed(own_ca_key, ca.cert.subject, ekus=[])
    forged = b.leaf(joined.device_key.public_key(), joined.cert.subject, own_ca, own_ca_key, ekus=[b.CLIENT_AUTH])
    for _ in range(2):
        assert _refused(lab, entra, _request(lab, entra, forged, joined.device_key)) == 50155
    assert base64.b64encode(b.cert_der(forged)).decode() not in ca.signed
    ended = datetime.now(UTC) - timedelta(days=1)
    expired = b.leaf(
        joined.device_key.public_key(),
        joined.cert.subject,
        ca.cert,
        ca.key,
        ekus=[b.CLIENT_AUTH],
        days=0,
        not_before=ended - timedelta(days=2),
    )
    assert expired.not_valid_after_utc < datetime.now(UTC)
    for _ in range(2):
        assert _refused(lab, entra, _request(lab, entra, expired, joined.device_key)) == 50155
    assert base64.b64encode(b.cert_der(expired)).decode() in ca.signed


@pytest.mark.parametrize("x5c", [[], [7], "not base64!", base64.b64encode(b"not a certificate").decode()])
def test_a_malformed_x5c_is_50027(lab: Lab, entra: Parts, joined: JoinedDevice, x5c: Any) -> None:
    """An empty x5c list was an IndexError (a 500); every malformed x5c is the protocol's 50027."""
    payload = {"request_nonce": entra.store.issue_nonce(300), "grant_type": "device_token"}
    request = jwt.encode(payload, joined.device_key, algorithm="RS256", headers={"x5c": x5c})
    assert _refused(lab, entra, request) == 50027


def test_a_known_drs_token_is_still_checked_for_its_lifetime_and_audience(
    lab: Lab, entra: Parts, joined: JoinedDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a DRS token verified before is refused once it has expired (PyJWT's 60 s leeway, then 50027), a token
    for another audience verified before is not a DRS token, and a token one character off is verified in full."""
    tenant = lab.config.primary_tenant
    user = tenant.users[0]
    drs = drs_token(entra, tenant.tenant_id, user.upn, user.password)
    join_device(entra, drs, user.upn)
    join_device(entra, drs, user.upn)  # known by its text now
    exp = jwt.decode(drs, options={"verify_signature": False})["exp"]
    monkeypatch.setattr(tokens.time, "time", lambda: exp + tokens.VERIFY_LEEWAY - 1.0)
    join_device(entra, drs, user.upn)  # within the leeway
    monkeypatch.setattr(tokens.time, "time", lambda: exp + tokens.VERIFY_LEEWAY + 1.0)
    with pytest.raises(DRSError) as refused:
        join_device(entra, drs, user.upn)
    assert refused.value.code == 50027 and "expired" in refused.value.message
    monkeypatch.undo()
    # a Graph token, verified for Graph's audience, is not a DRS bearer
    form = {
        "grant_type": "password",
        "username": user.upn,
        "password": user.password,
        "client_id": agent_entra.BROKER_CLIENT_ID,
        "resource": "https://graph.microsoft.com",
    }
    graph = str(entra.grants.token(TokenRequest(tenant.tenant_id, False, form, "192.0.2.1")).body["access_token"])
    entra.signer.verify(graph, audience=["https://graph.microsoft.com"])
    with pytest.raises(DRSError) as refused:
        join_device(entra, graph, user.upn)
    assert refused.value.code == 50027 and "audience" in refused.value.message
    # one character off the signature: verified in full and refused
    head, _, sig = drs.rpartition(".")
    forged = f"{head}.{sig[:-2]}{'A' if sig[-2] != 'A' else 'B'}{sig[-1]}"
    with pytest.raises(DRSError) as refused:
        join_device(entra, forged, user.upn)
    assert refused.value.code == 50027


def test_large_headers_of_refused_requests_are_not_kept(lab: Lab, entra: Parts, joined: JoinedDevice) -> None:
    """Attack: device-signed requests whose JOSE headers are each different and large (a form may be 16 MiB), with a
    real device certificate in x5c and another key's signature: each refused, and none kept afterwards (the
    headers known by their text, jwt_peek.KnownHeaders, are decoded before any signature is checked)."""
    x5c = base64.b64encode(b.cert_der(joined.cert)).decode()
    key = new_key()
    payload = {"request_nonce": "n", "grant_type": "device_token"}
    _refused(lab, entra, jwt.encode(payload, key, algorithm="RS256", headers={"x5c": [x5c]}))  # the certificate known
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(8):
            pad = f"{n:04}" + "A" * 512 * 1024
            assert _refused(lab, entra, jwt.encode(payload, key, algorithm="RS256", headers={"x5c": [x5c], "p": pad}))
            del pad
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1024 * 1024, f"{kept} bytes kept after 8 refused requests of ~0.7 MB each"
