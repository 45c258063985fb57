"""The CMG drops a connection point's channel that stays silent for three heartbeats, and only then: the silence
is measured from the point's last frame (one loop timer per silent spell, not one per frame). In-process, a fake
channel transport."""

from __future__ import annotations

import asyncio
import logging
import time

from cmglab.services.cmg.channel import Hub, PointChannel
from cmglab.wire.cmg_channel import Kind, encode

LOG = logging.getLogger("test_cmg_hub_silence")
HEARTBEAT = 0.5  # silence allowed: 1.5 s, far above a loaded machine's late wake-up from a 0.1 s sleep
TALK_EVERY = 0.1


class QuietPoint:
    """A point's end of the channel: sends what the test puts in `outgoing`, records the CMG's close."""

    def __init__(self) -> None:
        self.outgoing: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed: tuple[int, str | None] | None = None
        self.sent: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def receive_bytes(self) -> bytes:
        return await self.outgoing.get()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)


async def _until(condition: object, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not condition() and time.monotonic() < end:  # type: ignore[operator]
        await asyncio.sleep(0.01)


def test_a_point_that_keeps_talking_stays_and_a_silent_one_is_dropped() -> None:
    async def main() -> None:
        hub = Hub(LOG, heartbeat=HEARTBEAT)
        transport = QuietPoint()
        point = PointChannel(transport, "cmgcp.corp.lab.test", "CN=cmgcp", "00")
        serving = asyncio.create_task(hub.serve(point))
        # a frame every TALK_EVERY for longer than the allowed silence: the channel stays
        talked_until = time.monotonic() + HEARTBEAT * 4
        last_frame = time.monotonic()
        while time.monotonic() < talked_until:
            transport.outgoing.put_nowait(encode(Kind.PING, payload={"t": 1}))
            last_frame = time.monotonic()
            await asyncio.sleep(TALK_EVERY)
            assert not serving.done() and point in hub.points and transport.closed is None
        assert len(transport.sent) >= 4  # each PING answered (PONG)
        # then silence: dropped with the heartbeat reason, not much later than three heartbeats
        await _until(serving.done, 10)
        assert serving.done() and serving.exception() is None
        assert time.monotonic() - last_frame >= HEARTBEAT * 3 - 0.02
        assert transport.closed == (1011, f"no heartbeat for {HEARTBEAT * 3:g} s")
        assert point not in hub.points and point.closed

    asyncio.run(main())


def test_a_channel_that_closes_is_removed_without_the_heartbeat_reason() -> None:
    class Gone(QuietPoint):
        async def receive_bytes(self) -> bytes:
            raise ConnectionResetError("gone")

    async def main() -> None:
        hub = Hub(LOG, heartbeat=HEARTBEAT)
        transport = Gone()
        point = PointChannel(transport, "cmgcp.corp.lab.test", "CN=cmgcp", "00")
        await asyncio.wait_for(hub.serve(point), 5)
        assert transport.closed is None and point not in hub.points and point.closed

    asyncio.run(main())
