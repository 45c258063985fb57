"""The connection point's one error: a request from the CMG that it cannot forward. It has no HTTP
clients of its own (its admin listener serves `/_lab/*` only), so the protocol's error shape is the
channel's ABORT frame (`{"status", "reason"}`), which the CMG turns into its own `{"Error", "Reason"}`
reply; the forwarder's one handler records it, logs it and sends that frame."""

from __future__ import annotations

import uuid

from cmglab.wire.cmg_channel import Kind, encode


class ForwardError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason

    def frame(self, msg_id: uuid.UUID) -> bytes:
        """The ABORT frame that answers message `msg_id` with this error."""
        return encode(Kind.ABORT, msg_id, {"status": self.status, "reason": self.reason})
