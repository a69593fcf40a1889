"""A watchdog on one exchange with an engine: a hung engine (SIGSTOP, a stuck CUDA call) sends
nothing, and without a bound the proxy would wait on it for ever. Used by upstream.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watchdog:
    """Closes a connection that waited ``limit_s`` for the engine without progress; the read in
    progress then fails and ``fired`` turns its error into UpstreamTimeout. One timer per
    exchange, re-armed only when it fires early: progress is a single store."""

    __slots__ = ("close", "limit_s", "what", "last", "fired", "paused", "_loop", "_handle")

    def __init__(self, close: Callable[[], None], limit_s: float, what: str) -> None:
        self.close, self.limit_s, self.what, self.fired, self.paused = close, limit_s, what, False, False
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self.last + limit_s, self._check)

    def progress(self) -> None:
        """Bytes came, or the reader waits on the engine again after handing a piece on."""
        self.last = self._loop.time()
        self.paused = False

    def pause(self) -> None:
        """The reader hands a piece on: the time the client takes is not the engine's."""
        self.paused = True

    def switch(self, limit_s: float, what: str) -> None:
        """From waiting for the head to waiting for the body."""
        self.limit_s, self.what = limit_s, what
        self.progress()
        self._check()

    def _check(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self.paused:
            self.last = self._loop.time()
        due = self.last + self.limit_s
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._handle, self.fired = None, True
        self.close()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def describe(self) -> str:
        return f"the engine sent {self.what} for {self.limit_s:g} s (hung?)"
