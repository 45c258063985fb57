"""`EntraPolicy`'s order, in-process with hand-signed tokens: signature, issuer and lifetime first, then
"tenant not onboarded", then the audience bound to the token's own tenant (review 2, finding 2)."""

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


def refusal(policy: EntraPolicy, keys: EntraKeys, tok: str) -> EntraTokenError:
    with pytest.raises(EntraTokenError) as refused:
        asyncio.run(policy.claims(keys, tok))
    return refused.value


ONLY_A = EntraPolicy({A: TenantAudience(A_URI, A_APP)})
BOTH = EntraPolicy({A: TenantAudience(A_URI, A_APP), B: TenantAudience(B_URI, B_APP)})


def test_no_tenant_onboarded_is_other_tenant_not_onboarded(key: rsa.RSAPrivateKey, keys: EntraKeys) -> None:
    assert refusal(EntraPolicy({}), keys, token(key, A, A_URI)).kind == OTHER_TENANT


@pytest.mark.parametrize("aud", [B_URI, B_APP, [B_URI, B_APP]])
def test_not_onboarded_tenant_with_its_own_audience_is_other_tenant_not_onboarded(
    key: rsa.RSAPrivateKey, keys: EntraKeys, aud: Any
) -> None:
    assert refusal(ONLY_A, keys, token(key, B, aud)).kind == OTHER_TENANT


@pytest.mark.parametrize("aud", [B_URI, B_APP, [A_URI, B_URI]])
def test_onboarded_tenant_with_another_tenants_audience_is_wrong_audience(
    key: rsa.RSAPrivateKey, keys: EntraKeys, aud: Any
) -> None:
    assert refusal(BOTH, keys, token(key, A, aud)).kind == WRONG_AUDIENCE


@pytest.mark.parametrize("aud", [A_URI, A_APP, [A_URI, A_APP]])
def test_onboarded_tenant_with_its_own_audience_is_accepted(key: rsa.RSAPrivateKey, keys: EntraKeys, aud: Any) -> None:
    assert asyncio.run(BOTH.claims(keys, token(key, A, aud)))["tid"] == A


def test_signature_is_checked_before_the_tenant(keys: EntraKeys) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refusal(EntraPolicy({}), keys, token(stranger, B, B_URI)).kind == FORGED


def test_a_token_without_aud_is_refused(key: rsa.RSAPrivateKey, keys: EntraKeys) -> None:
    now = int(time.time())
    claims = {"tid": A, "iss": f"https://sts.windows.net/{A}/", "exp": now + 3600, "deviceid": "d"}
    tok = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})
    assert refusal(ONLY_A, keys, tok).kind == FORGED
