"""Run a runtime `Service` inside the test process, in a thread with its own event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

from cmglab.runtime.server import Service, serve


class ThreadedService:
    def __init__(self, service: Service, uvloop: bool = False) -> None:
        """`uvloop`: on uvloop's event loop, as the lab's own processes serve (run_service); asyncio's otherwise."""
        self.service, self.uvloop = service, uvloop
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            await serve(self.service, stop=self.stop)

        try:
            if self.uvloop:
                import uvloop

                uvloop.run(main())
            else:
                asyncio.run(main())
        except BaseException as e:  # surfaced to the test by __enter__/__exit__
            self.error = e

    def __enter__(self) -> ThreadedService:
        self.thread.start()
        import socket

        deadline = time.monotonic() + 10
        for listener in self.service.listeners:
            while True:
                if self.error:
                    raise self.error
                try:
                    socket.create_connection((listener.host, listener.port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{listener.name} did not start") from None
                    time.sleep(0.05)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.loop and self.stop:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(15)
