"""The MP's Entra tokens known by their text (services/management_point/entra_known.py, issue 20), in-process with
hand-signed tokens: a token accepted under a rule is not checked again under the same rule and keys before its exp;
another rule (an onboarding or offboarding), other keys, an expired token, a one-byte different token and every
refusal are checked in full, with the full check's verdict."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.services.management_point import entra_known
from cmglab.services.management_point.entra_known import KnownEntraTokens
from cmglab.wire.entra_tokens import (
    FORGED,
    LEEWAY,
    OTHER_TENANT,
    EntraKeys,
    EntraPolicy,
    EntraTokenError,
    TenantAudience,
)

KID = "known-test-key"
A = "aaaaaaaa-0000-0000-0000-00000000000a"
A_URI = "https://a.example/ConfigMgrService"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def keys_of(key: rsa.RSAPrivateKey) -> EntraKeys:
    entra = EntraKeys(None, None)
    entra.keys = {KID: key.public_key()}
    return entra


def token(key: rsa.RSAPrivateKey, lifetime: int = 3600, **extra: Any) -> str:
    now = int(time.time())
    claims = {"tid": A, "aud": A_URI, "iss": f"https://sts.windows.net/{A}/", "iat": now, "exp": now + lifetime}
    return jwt.encode({**claims, "deviceid": "dev-1", **extra}, key, algorithm="RS256", headers={"kid": KID})


class Counted(EntraPolicy):
    """The site's rule, counting its full checks."""

    checks = 0

    def claims_now(self, keys: EntraKeys, token: str) -> dict[str, Any]:
        type(self).checks += 1
        return super().claims_now(keys, token)


@pytest.fixture
def rule() -> Counted:
    Counted.checks = 0
    return Counted({A: TenantAudience(A_URI)})


def test_an_accepted_token_is_known_under_the_same_rule_and_keys(key: rsa.RSAPrivateKey, rule: Counted) -> None:
    known, keys, tok = KnownEntraTokens(), keys_of(key), token(key)
    first = known.claims_now(rule, keys, tok)
    again = known.claims_now(rule, keys, tok)
    assert again == first == rule.claims_now(keys, tok) and Counted.checks == 2  # one check by the cache
    again["tid"] = "changed"  # a copy each time
    assert known.claims_now(rule, keys, tok)["tid"] == A


def test_another_rule_or_other_keys_check_in_full(key: rsa.RSAPrivateKey, rule: Counted) -> None:
    known, keys, tok = KnownEntraTokens(), keys_of(key), token(key)
    known.claims_now(rule, keys, tok)
    offboarded = Counted({})  # the tenant offboarded: the store's rule is a new object
    with pytest.raises(EntraTokenError) as refused:
        known.claims_now(offboarded, keys, tok)
    assert refused.value.kind == OTHER_TENANT
    known.claims_now(rule, keys_of(key), tok)  # equal keys, another object: checked again
    assert Counted.checks == 3


def test_an_expired_token_is_checked_in_full(
    key: rsa.RSAPrivateKey, rule: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    known, keys, tok = KnownEntraTokens(), keys_of(key), token(key, lifetime=60)
    known.claims_now(rule, keys, tok)
    later = time.time() + 60 + LEEWAY + 1
    monkeypatch.setattr(entra_known.time, "time", lambda: later)  # the cache's clock past exp + leeway
    known.claims_now(rule, keys, tok)
    assert Counted.checks == 2


def test_refusals_and_other_texts_are_never_known(key: rsa.RSAPrivateKey, rule: Counted) -> None:
    known, keys, tok = KnownEntraTokens(), keys_of(key), token(key)
    forged = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
    for _ in range(2):
        with pytest.raises(EntraTokenError) as refused:
            known.claims_now(rule, keys, forged)
        assert refused.value.kind == FORGED
    assert Counted.checks == 2
    known.claims_now(rule, keys, tok)
    other = token(key, upn="someone@a.example")  # another token of the same device: checked
    known.claims_now(rule, keys, other)
    assert Counted.checks == 4


def test_bounded(key: rsa.RSAPrivateKey, rule: Counted) -> None:
    known, keys = KnownEntraTokens(size=2), keys_of(key)
    toks = [token(key, n=n) for n in range(3)]
    for tok in toks:
        known.claims_now(rule, keys, tok)
    known.claims_now(rule, keys, toks[0])  # the oldest went first
    known.claims_now(rule, keys, toks[2])
    assert Counted.checks == 4
