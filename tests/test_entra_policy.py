"""`EntraPolicy`'s order, in-process with hand-signed tokens: signature, issuer and lifetime first, then
"tenant not onboarded", then the audience bound to the token's own tenant (review 2, finding 2). Each case runs
both ways of asking: `claims` (awaited, the CMG's) and `claims_now` (in the calling thread, the MP's one-hop
check, issue 20), which must give the same verdicts, reasons and claims."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.wire.entra_tokens import (
    FORGED,
    OTHER_TENANT,
    WRONG_AUDIENCE,
    EntraKeys,
    EntraPolicy,
    EntraTokenError,
    TenantAudience,
)

KID = "policy-test-key"
A, B = "aaaaaaaa-0000-0000-0000-00000000000a", "bbbbbbbb-0000-0000-0000-00000000000b"
A_URI, B_URI = "https://a.example/ConfigMgrService", "https://b.example/ConfigMgrService"
A_APP, B_APP = "11111111-0000-0000-0000-00000000000a", "22222222-0000-0000-0000-00000000000b"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys(key: rsa.RSAPrivateKey) -> EntraKeys:
    entra = EntraKeys(None, None)
    entra.keys = {KID: key.public_key()}
    return entra


def token(key: rsa.RSAPrivateKey, tid: str, aud: Any, **extra: Any) -> str:
    now = int(time.time())
    claims = {"tid": tid, "aud": aud, "iss": f"https://sts.windows.net/{tid}/", "iat": now, "exp": now + 3600}
    return jwt.encode({**claims, "deviceid": "dev-1", **extra}, key, algorithm="RS256", headers={"kid": KID})


@pytest.fixture(params=["claims", "claims_now"])
def way(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def ask(policy: EntraPolicy, keys: EntraKeys, tok: str, way: str) -> dict[str, Any]:
    if way == "claims_now":
        return policy.claims_now(keys, tok)
    return asyncio.run(policy.claims(keys, tok))


def refusal(policy: EntraPolicy, keys: EntraKeys, tok: str, way: str = "claims") -> EntraTokenError:
    with pytest.raises(EntraTokenError) as refused:
        ask(policy, keys, tok, way)
    return refused.value


ONLY_A = EntraPolicy({A: TenantAudience(A_URI, A_APP)})
BOTH = EntraPolicy({A: TenantAudience(A_URI, A_APP), B: TenantAudience(B_URI, B_APP)})


def test_no_tenant_onboarded_is_other_tenant_not_onboarded(key: rsa.RSAPrivateKey, keys: EntraKeys, way: str) -> None:
    assert refusal(EntraPolicy({}), keys, token(key, A, A_URI), way).kind == OTHER_TENANT


@pytest.mark.parametrize("aud", [B_URI, B_APP, [B_URI, B_APP]])
def test_not_onboarded_tenant_with_its_own_audience_is_other_tenant_not_onboarded(
    key: rsa.RSAPrivateKey, keys: EntraKeys, aud: Any, way: str
) -> None:
    assert refusal(ONLY_A, keys, token(key, B, aud), way).kind == OTHER_TENANT


@pytest.mark.parametrize("aud", [B_URI, B_APP, [A_URI, B_URI]])
def test_onboarded_tenant_with_another_tenants_audience_is_wrong_audience(
    key: rsa.RSAPrivateKey, keys: EntraKeys, aud: Any, way: str
) -> None:
    assert refusal(BOTH, keys, token(key, A, aud), way).kind == WRONG_AUDIENCE


@pytest.mark.parametrize("aud", [A_URI, A_APP, [A_URI, A_APP]])
def test_onboarded_tenant_with_its_own_audience_is_accepted(
    key: rsa.RSAPrivateKey, keys: EntraKeys, aud: Any, way: str
) -> None:
    assert ask(BOTH, keys, token(key, A, aud), way)["tid"] == A


def test_signature_is_checked_before_the_tenant(keys: EntraKeys, way: str) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refusal(EntraPolicy({}), keys, token(stranger, B, B_URI), way).kind == FORGED


def test_a_token_without_aud_is_refused(key: rsa.RSAPrivateKey, keys: EntraKeys, way: str) -> None:
    now = int(time.time())
    claims = {"tid": A, "iss": f"https://sts.windows.net/{A}/", "exp": now + 3600, "deviceid": "d"}
    tok = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})
    assert refusal(ONLY_A, keys, tok, way).kind == FORGED


def test_both_ways_give_the_same_verdict_reason_and_claims(key: rsa.RSAPrivateKey, keys: EntraKeys) -> None:
    """The MP's one-hop check (`claims_now`) and the awaited one agree on every kind of token: accepted ones give
    the same claims, refused ones the same kind and reason (what the MP logs and answers)."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    tokens = [
        token(key, A, A_URI),
        token(key, A, A_URI, exp=now - 3600),  # expired
        token(key, A, A_URI, iss="https://sts.windows.net/someone-else/"),  # wrong issuer
        token(key, A, B_URI),  # another tenant's audience
        token(key, B, B_URI),  # tenant not onboarded
        token(key, A, A_URI, deviceid=""),  # no device
        token(stranger, A, A_URI),  # forged
        jwt.encode({"tid": A, "aud": A_URI}, key, algorithm="RS256", headers={"kid": "unknown-kid"}),
        jwt.encode({"tid": A, "aud": A_URI}, "secret-of-32-bytes-for-hs256-key", algorithm="HS256"),
        "not.a.jwt",
        "",
    ]
    for tok in tokens:
        verdicts: list[tuple[str, object]] = []
        for way in ("claims", "claims_now"):
            try:
                verdicts.append(("valid", ask(ONLY_A, keys, tok, way)))
            except EntraTokenError as e:
                verdicts.append((str(e.kind), e.reason))
        assert verdicts[0] == verdicts[1], tok


def test_claims_now_needs_keys_that_are_never_fetched(key: rsa.RSAPrivateKey) -> None:
    fetching = EntraKeys(object(), "https://login.example/keys")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ONLY_A.claims_now(fetching, token(key, A, A_URI))
