"""The listener limits take positive values only (review 3, finding 7): CMGLAB_IDLE_TIMEOUT=0 (or a negative
value) would close every connection at once, a zero cap would refuse every connection; such a value is refused
when the settings are read, with the setting's name in the error."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cmglab.core.settings import Settings

LIMITS = (
    "MAX_BODY_BYTES",
    "MAX_BODY_CHUNKS",
    "MAX_URL_BYTES",
    "MAX_HEADER_BYTES",
    "HEAD_TIMEOUT",
    "TLS_HANDSHAKE_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_HANDSHAKES",
)


@pytest.mark.parametrize("name", LIMITS)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_limit_of_zero_or_less_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"CMGLAB_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


@pytest.mark.parametrize("name", LIMITS)
def test_a_positive_limit_is_taken(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(f"CMGLAB_{name}", "7")
    assert getattr(Settings(), name.lower()) == 7
