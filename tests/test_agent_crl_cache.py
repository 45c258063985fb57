"""The agent's in-process CRL reuse is bounded (review 2, finding 7): a fleet or bench process running thousands
of devices keeps at most `FETCHED_MAX` parsed CRLs, the least recently used dropped first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cmglab.agent import network


def test_the_crl_reuse_is_an_lru_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "_FETCHED", type(network._FETCHED)())
    monkeypatch.setattr(network, "FETCHED_MAX", 3)
    entry: Any = ((1, 1), "crl", "issuer")  # the LRU never looks inside an entry
    for n in range(3):
        network._remember(Path(f"/devices/{n}.crl"), entry)
    recalled = network._recall(Path("/devices/0.crl"))  # used: now the most recent
    assert recalled is not None and recalled[1] == "crl"
    for n in range(3, 10):
        network._remember(Path(f"/devices/{n}.crl"), entry)
        assert len(network._FETCHED) <= 3
    assert list(network._FETCHED) == [Path(f"/devices/{n}.crl") for n in (7, 8, 9)]
    assert network._recall(Path("/devices/1.crl")) is None
