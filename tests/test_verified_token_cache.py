"""Site tokens verified once and then known by their text (issue 20): the MP's tokenauth path and the CMG's
ServerAuth skip the RSA verification for a CCM token they verified before. The attacks: a token that differs
from a known one (a claim changed, the signature changed) is verified in full and refused, over sockets at the
MP and through the CMG; a known token is refused once it expires, or where its type is not accepted."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta

import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.bench import loadgen, scenarios
from cmglab.tools.processes import LabProcesses
from cmglab.wire import site_tokens


def _tampered_claim(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["DeviceId"] = "GUID:00000000-0000-0000-0000-000000000001"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def _tampered_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[-1] ^= 1
    return f"{head}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def _statuses(target: loadgen.Target, requests: list[loadgen.Request]) -> list[int]:
    async def one(request: loadgen.Request) -> int:
        result = await loadgen.run("t", target, lambda _i: request, connections=1, duration=30, max_requests=1)
        assert result.errors == 0
        return next(iter(result.statuses))

    async def all_in_order() -> list[int]:
        return [await one(r) for r in requests]

    return asyncio.run(all_in_order())


def _with_token(request: loadgen.Request, token: str) -> loadgen.Request:
    return loadgen.Request(
        request.method, request.path, {**request.headers, "Authorization": f"Bearer {token}"}, request.body
    )


@pytest.mark.parametrize("via_cmg", [False, True], ids=["mp", "cmg"])
def test_a_token_unlike_a_known_one_is_verified_in_full(lab: Lab, lab_services: LabProcesses, via_cmg: bool) -> None:
    lab_services.ensure("pki", "entra", "management-point", "cmg", "cmg-connection-point")
    role = lab.config.site.role_id
    path = f"/CCM_Proxy_ServerAuth/{role}/ccm_system_tokenauth/request" if via_cmg else "/ccm_system_tokenauth/request"
    request = scenarios.location_request(lab, path)
    target = scenarios.service_target(lab, "cmg" if via_cmg else "management-point")
    good = request.headers["Authorization"].removeprefix("Bearer ")
    statuses = _statuses(
        target,
        [
            request,
            request,
            _with_token(request, _tampered_claim(good)),
            _with_token(request, _tampered_signature(good)),
            request,
        ],
    )
    assert statuses == [200, 200, 401, 401, 200]


def test_a_known_token_expires_and_keeps_its_type(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    signer = lab.site_signer()
    cache = site_tokens.VerifiedTokens(signer.cert, signer.hierarchy_id)
    token, expires = signer.ccm_token(token_type=site_tokens.DEVICE, lifetime=timedelta(minutes=5))
    assert cache.verify(token, site_tokens.CCM_TYPES)["Type"] == site_tokens.DEVICE
    assert cache.known(token, site_tokens.CCM_TYPES) is not None
    with pytest.raises(site_tokens.SiteTokenError, match="not accepted"):  # a CCM token is no client token
        cache.known(token, (site_tokens.CLIENT,))
    later = (expires + timedelta(seconds=site_tokens.LEEWAY + 1)).timestamp()
    monkeypatch.setattr(site_tokens.time, "time", lambda: later)
    with pytest.raises(site_tokens.SiteTokenError, match="expired"):
        cache.known(token, site_tokens.CCM_TYPES)
    monkeypatch.undo()
    assert cache.known(token) is None  # forgotten once expired: a later use is verified in full (PyJWT's clock)


def test_a_token_the_site_issued_is_known_as_verified_and_nothing_else_is(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CCM_STS hands the token it signed to the MP's cache (`issued`): its first use skips the verification. It
    is known with the claims a full verification gives, still expires and keeps its type; a token that differs
    from it by a claim or the signature is not known, and the full verification refuses it."""
    signer = lab.site_signer()
    cache = site_tokens.VerifiedTokens(signer.cert, signer.hierarchy_id)
    token, expires = signer.ccm_token(token_type=site_tokens.DEVICE, lifetime=timedelta(minutes=5))
    cache.issued(token)
    fresh = site_tokens.VerifiedTokens(signer.cert, signer.hierarchy_id)
    assert cache.known(token, site_tokens.CCM_TYPES) == fresh.verify(token, site_tokens.CCM_TYPES)
    for forged in (_tampered_claim(token), _tampered_signature(token)):
        assert forged not in cache and cache.known(forged) is None
        with pytest.raises(site_tokens.SiteTokenError):
            cache.verify(forged, site_tokens.CCM_TYPES)
    with pytest.raises(site_tokens.SiteTokenError, match="not accepted"):
        cache.known(token, (site_tokens.CLIENT,))
    later = (expires + timedelta(seconds=site_tokens.LEEWAY + 1)).timestamp()
    monkeypatch.setattr(site_tokens.time, "time", lambda: later)
    with pytest.raises(site_tokens.SiteTokenError, match="expired"):
        cache.known(token, site_tokens.CCM_TYPES)
