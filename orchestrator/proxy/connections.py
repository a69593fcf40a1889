"""Bounds on the client connections the proxy holds: how long a request may take to arrive,
and how many connections the file-descriptor limit allows.

- Slow clients (slowloris): a request's head must arrive within ``header_timeout_s`` of its
  first byte (of the connection, for a connection that sends nothing), and its body within
  ``body_timeout_s`` of the head. Otherwise the connection is answered 408 in the envelope
  (nothing if a response already began) and closed. Between requests on a keep-alive
  connection, uvicorn's own ``timeout_keep_alive`` applies. While the app works on an answer
  no timer runs: a long generation is never cut here.
- Descriptors: ``raise_nofile`` raises the soft RLIMIT_NOFILE to the hard limit at start;
  ``connection_budget`` derives how many client connections that leaves room for. A connection
  beyond the budget is answered 503 in the envelope and closed at once. This must happen
  before the process runs out of descriptors: when ``accept()`` fails with EMFILE, asyncio
  stops accepting for a second at a time and the proxy looks dead to every client. asyncio
  accepts up to its server's backlog of sockets at each readiness event before any of them is
  counted, so that backlog (``accept_burst``) is bounded by the limit too, and so are refused
  connections left to linger: both come out of the budget.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestrator.proxy.errors import ProxyError

log = logging.getLogger("chimera.proxy")

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0  # a 32 MiB body (the default limit) at about 0.5 MB/s
# descriptors kept for everything that is not a client connection: engine log files and
# pipes, the scraper's and the KV runner's sockets, the listening socket, Python's own
RESERVED_FDS = 128
MIN_CONNECTIONS = 16
LINGER_S = 1.0  # how long a refused connection is drained before it is closed

Phase = Literal["head", "body"]


def raise_nofile() -> tuple[int, int]:
    """Raises the soft descriptor limit to the hard one (logs old and new); returns the
    (old, new) soft limit. A hard limit of RLIM_INFINITY is capped at 1,048,576 (Linux's
    default ``nr_open``: a larger soft limit is refused)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file-descriptor limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        log.info("file-descriptor limit raised from %d to %d", soft, target)
        return soft, target
    log.info("file-descriptor limit %d (already the hard limit)", soft)
    return soft, soft


def accept_burst(nofile: int) -> int:
    """Sockets asyncio may accept at one readiness event (the server's backlog, uvicorn's 2048
    by default) under a soft limit of ``nofile``: an eighth of it, 32 to 2048. Also how many
    refused connections may linger beyond the budget."""
    return min(2048, max(32, nofile // 8))


def connection_budget(nofile: int) -> int:
    """How many client connections a soft descriptor limit of ``nofile`` allows: what is left
    after ``RESERVED_FDS``, one accept burst and as many lingering refusals, halved, because
    each forwarded request holds a second descriptor (its connection to the engine)."""
    return max(MIN_CONNECTIONS, (nofile - RESERVED_FDS - 2 * accept_burst(nofile)) // 2)


def current_nofile() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def current_budget() -> int:
    """``connection_budget`` of this process's soft limit now."""
    return connection_budget(current_nofile())


def request_timeout(phase: Phase, limit_s: float) -> ProxyError:
    env = "CHIMERA_HEADER_TIMEOUT_S" if phase == "head" else "CHIMERA_BODY_TIMEOUT_S"
    part = "request line and headers" if phase == "head" else "request body"
    return ProxyError(408, f"the {part} did not arrive within {limit_s:g} s ({env})", code="request_timeout")


def too_many_connections(limit: int) -> ProxyError:
    return ProxyError(
        503,
        f"the proxy holds as many client connections as it accepts ({limit}); retry shortly",
        code="too_many_connections",
        headers={"Retry-After": "1"},
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the slow-client timers and the connection budget
    (class attributes, set by ``limits.uvicorn_http_options``)."""

    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s = DEFAULT_BODY_TIMEOUT_S
    max_connections = 1 << 20
    linger_slots = 1 << 20  # refused connections that may linger beyond max_connections
    # refused connections lingering now, oldest first (one dict per server: limits.py)
    lingering: ClassVar[OrderedDict[int, asyncio.Transport]] = OrderedDict()
    _shedding = False  # class-wide: log when shedding begins, not once per connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cls = type(self)
        if len(self.connections) > self.max_connections:  # this one is already in the set
            if not cls._shedding:
                log.warning(
                    "%d client connections open: new ones are answered 503 until some close", self.max_connections
                )
            cls._shedding = True
            self._refuse(too_many_connections(self.max_connections))
            return
        cls._shedding = False
        self._arm("head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.lingering.pop(id(self), None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # read (so the close is no reset) and dropped
            self.transport.close()
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm("head")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # may raise to refuse the head (limits.py): no timer then
        self._arm("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def _arm(self, phase: Phase) -> None:
        self._disarm()
        limit = self.header_timeout_s if phase == "head" else self.body_timeout_s
        self._timer = self.loop.call_later(limit, self._expired, phase, limit)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: Phase, limit_s: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        err = request_timeout(phase, limit_s)
        log.info("closed a slow client connection: %s", err.message)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            if cycle is not None:
                cycle.disconnected = True  # the app reads a disconnect; its answer goes nowhere
                cycle.message_event.set()
            self._refuse(err)
        else:
            self.transport.close()  # mid-response: the close alone says it

    def _refuse(self, err: ProxyError) -> None:
        """Answers ``err`` and closes. Closing a socket with unread request bytes would reset
        it, and the client would see a reset instead of the answer: so the write side is shut
        (the client reads the answer, then EOF) and the connection closes when more bytes
        arrive (read and dropped), when the client closes it, or after ``LINGER_S``. Past
        ``linger_slots`` (descriptors come first) the oldest lingering one is closed to make room:
        its client had the longest to read its answer, while closing this one at once would
        reset it before its client even sent its request (it reads a reset, not the 503)."""
        self._refused = True
        self._disarm()
        transport = self.transport
        transport.write(err.http_close())
        if not transport.can_write_eof():
            transport.close()
            return
        # (a closed connection leaves the set a moment later: at most this many are closed)
        excess = len(self.connections) - self.max_connections - self.linger_slots
        while excess > 0 and self.lingering:
            _, oldest = self.lingering.popitem(last=False)
            oldest.close()
            excess -= 1
        if excess > 0:
            transport.close()  # no refusal lingers to make room for this one
            return
        transport.write_eof()
        self.lingering[id(self)] = transport
        self.loop.call_later(LINGER_S, transport.close)
