"""Entra tokens the MP accepted, known again by their text under the same rule (issue 20).

A device shows the MP its Entra token twice in a row (seed 001: its registration over ccm_system_tokenauth, then
CCM_STS's AAD proof), and a CCM_STS client may ask again with the same token; the verification (PyJWT's decode and
the RSA signature) is most of what checking it costs. A token the site's rule accepted is remembered with that
rule (`EntraPolicy`, one object per state of the onboarded tenants: `store.entra_policy`) and the keys it was
checked with; it is taken as accepted again only under the same rule object and the same keys and before its `exp`
(with Entra's leeway, as the check has it): a signature, issuer, audience, tenant or device claim does not change
with time, and its not-before only becomes truer. Anything else (another rule after an onboarding, an expired token,
a token one byte different) is checked in full by `EntraPolicy.claims_now`, which raises what it raises. Refusals
are never remembered. Bounded: the oldest entries go first."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from cmglab.wire.entra_tokens import LEEWAY, EntraKeys, EntraPolicy


class KnownEntraTokens:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        # token -> (the rule and the keys it was accepted under, its claims); the entry holds both, so an `is`
        # comparison never meets a new object at a freed one's address
        self._known: OrderedDict[str, tuple[EntraPolicy, EntraKeys, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def claims_now(self, policy: EntraPolicy, keys: EntraKeys, token: str) -> dict[str, Any]:
        """`policy.claims_now(keys, token)`: the claims of a token accepted before under the same rule and keys and
        not expired, else the full check (EntraTokenError as it raises; the accepted token remembered)."""
        with self._lock:
            known = self._known.get(token)
        if known is not None:
            rule, checked_with, claims = known
            exp = claims.get("exp")
            if rule is policy and checked_with is keys and isinstance(exp, int | float) and exp + LEEWAY > time.time():
                return dict(claims)
        claims = policy.claims_now(keys, token)
        with self._lock:
            self._known[token] = (policy, keys, dict(claims))
            self._known.move_to_end(token)
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        return claims
