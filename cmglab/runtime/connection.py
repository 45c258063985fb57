"""State kept per TCP connection, as IIS keeps it (Windows authentication is connection-based).

The uvicorn protocol classes in `runtime.tls` create one `ConnectionState` when a connection is
made, put it in every request's `scope["extensions"][CONNECTION_EXTENSION]`, and close it when the
connection is lost: nothing keyed by a client address/port can outlive its connection and be
inherited by the next client that happens to reuse the port.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

CONNECTION_EXTENSION = "cmglab.connection"


class ConnectionState:
    """What one connection carries between its requests (a handshake in progress, who it authenticated)."""

    __slots__ = ("open", "values")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.open = True

    def close(self) -> None:
        self.values.clear()
        self.open = False


def connection_state(scope: MutableMapping[str, Any]) -> ConnectionState | None:
    """The connection a request arrived on; None where the server does not provide it (test clients)."""
    state = scope.get("extensions", {}).get(CONNECTION_EXTENSION)
    return state if isinstance(state, ConnectionState) else None
