"""The client side of one proxied exchange, at the ASGI level (the body is read by
limits.read_limited): notice the client leaving, send the response while remembering how far it got.

Raw ASGI rather than Starlette's Request/StreamingResponse so that one coroutine owns the whole
exchange (hold, upstream call, relay) and one ``finally`` releases the engine, whatever the
server's ASGI spec version (StreamingResponse only watches for disconnects below spec 2.4).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from starlette.types import Message, Receive, Send


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent (internal to the proxy)."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects. Call only after the body was read. Servers also
    report a disconnect once the response is complete; callers check ``Downstream.completed``."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class Downstream:
    """Sends the response to the client and records what was sent (for metrics and for knowing
    whether an error can still get a status line of its own)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None  # status line sent, None before the response starts
        self.completed = False  # the final body message went out
        self.first_chunk_at: float | None = None  # monotonic time of the first non-empty chunk
        self.completed_at: float | None = None

    @property
    def started(self) -> bool:
        return self.status is not None

    async def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        self.status = status
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await self._message({"type": "http.response.start", "status": status, "headers": raw})

    async def chunk(self, data: bytes) -> None:
        if data and self.first_chunk_at is None:
            self.first_chunk_at = time.monotonic()
        await self._message({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes = b"") -> None:
        await self._message({"type": "http.response.body", "body": data, "more_body": False})
        self.completed = True
        self.completed_at = time.monotonic()

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """A whole response in two messages."""
        await self.start(status, [("content-type", content_type), ("content-length", str(len(body))), *headers])
        await self.finish(body)

    async def _message(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError as exc:  # ASGI spec >= 2.4 servers raise on a closed connection
            raise ClientGone() from exc
