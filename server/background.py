"""The server on an event loop of its own thread, for callers that block: quickstart's demo and the tests.

A blocking gRPC client must not run on the server's loop (it would wait on itself), so the server gets a thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from gamjeong.server.app import GamjeongServer

if TYPE_CHECKING:
    from gamjeong.predictor import Predictor
    from gamjeong.server.settings import ServerSettings

T = TypeVar("T")


class BackgroundServer:
    """`start()` returns the gRPC target once the model is loaded and warmed up; `stop()` shuts it down."""

    def __init__(self, settings: ServerSettings, predictor_factory: Callable[[], Predictor] | None = None) -> None:
        self.settings = settings
        self._predictor_factory = predictor_factory
        self.server: GamjeongServer | None = None  # made on its own loop (its asyncio objects belong there)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gamjeong-server", daemon=True)

    @property
    def target(self) -> str:
        assert self.server is not None, "start() first"
        return f"{self.settings.host}:{self.server.port}"

    @property
    def http_port(self) -> int | None:
        return None if self.server is None else self.server.http_port

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _start(self) -> None:
        self.server = GamjeongServer(self.settings, predictor_factory=self._predictor_factory)
        await self.server.start()

    def start(self, timeout_s: float = 300.0) -> str:
        self._thread.start()
        try:
            self.run(self._start(), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.target

    def stop(self, grace_s: float = 5.0) -> None:
        if self._thread.is_alive():
            try:
                if self.server is not None:
                    self.run(self.server.stop(grace_s, drain_s=0), grace_s + 30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
