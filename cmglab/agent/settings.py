"""The agent's timeouts and retries, as environment variables (prefix `CMGLAB_`), read when used.

The real client rides out a site it cannot reach for a while: WinHTTP gives up on a silent server,
CcmMessaging sends a failed message again, RegTask sleeps and registers again, ccmsetup retries with
`/retry:` (default 10 minutes). The product waits minutes; the lab's defaults are seconds so that a
test or a fleet run sees the same behaviour in time.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CMGLAB_", extra="ignore")

    # every request the device sends: connect, each read and each write (httpx timeouts, per phase)
    client_timeout: float = 30.0
    # CcmMessaging and CCM_STS: tries per message after a network failure, a timeout or a 5xx answer,
    # waiting ccmhttp_retry_delay seconds before the second, doubling up to ccmhttp_retry_delay_max
    ccmhttp_attempts: int = 3
    ccmhttp_retry_delay: float = 0.5
    ccmhttp_retry_delay_max: float = 4.0
    # RegTask: registration attempts and the sleep between them
    regtask_attempts: int = 3
    regtask_interval: float = 2.0

    def retry_delay(self, attempt: int) -> float:
        """The pause after failed attempt `attempt` (1-based) of a CcmMessaging exchange."""
        return float(min(self.ccmhttp_retry_delay * 2 ** (attempt - 1), self.ccmhttp_retry_delay_max))


@lru_cache(maxsize=8)
def _settings_for(env: tuple[tuple[str, str], ...]) -> AgentSettings:
    return AgentSettings()


def agent_settings() -> AgentSettings:
    """The settings as the environment says now: built again only when a CMGLAB_ variable changed (building
    them parses every field, ~0.3 ms, and every CcmMessaging request asked for them)."""
    return _settings_for(tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("CMGLAB_"))))
