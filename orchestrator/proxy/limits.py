"""How much of a request the proxy reads: a body and a header limit, enforced while reading,
so that no client makes the proxy buffer more than the limit (plus one socket read).

- The body: ``read_limited`` counts ``http.request`` messages and stops at the limit (413); a
  ``content-length`` over the limit is refused before any of the body is read.
- The head (request line + headers): uvicorn's httptools parser buffers a header whole before
  it calls back, so the count is kept below the parser, in ``data_received``: bytes received
  since a request began while its head is incomplete. Over the limit, the connection answers
  431 in the envelope and closes. (h11, uvicorn's other parser, bounds the same buffer with
  ``h11_max_incomplete_event_size`` and answers a plain 400; ``uvicorn_http_options`` sets both.)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestrator.env import Env
from orchestrator.proxy.connections import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    GuardedHttpToolsProtocol,
    accept_burst,
    current_budget,
    current_nofile,
)
from orchestrator.proxy.errors import ProxyError

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # what production gateways allow (nginx-style limits)
DEFAULT_MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class RequestLimits:
    """What a client may send and hold: sizes (this module) and times and connections
    (connections.py). ``max_connections`` None: derived from the descriptor limit."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_connections: int | None = None

    @staticmethod
    def from_env(env: Env) -> RequestLimits:
        """The limits the CHIMERA_* variables set (orchestrator/env.py): one reading for every
        proxy process, the primary and the data plane's workers alike."""
        return RequestLimits(
            env.max_body_bytes, env.max_header_bytes, env.header_timeout_s, env.body_timeout_s, env.max_connections
        )


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"the request body is larger than this server accepts ({limit} bytes; CHIMERA_MAX_BODY_BYTES)",
        code="body_too_large",
    )


def headers_too_large(limit: int) -> ProxyError:
    return ProxyError(
        431,
        f"the request line and headers are larger than this server accepts ({limit} bytes; CHIMERA_MAX_HEADER_BYTES)",
        code="headers_too_large",
    )


async def read_limited(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client disconnected before sending it. Raises
    ProxyError 413 as soon as the body is known to exceed ``limit`` (its content-length, or
    the bytes received so far): the rest is never read."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise body_too_large(limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on a request's head (``max_header_bytes``,
    set by ``uvicorn_http_options``)."""

    max_header_bytes = DEFAULT_MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._refusal: ProxyError | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # the chunk that began the request may hold bytes of the one before: an overcount
            # of at most one read, on the safe side
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(headers_too_large(self.max_header_bytes))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # a whole head that arrived in one read is measured here, before the app sees it
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.max_header_bytes:
            self._refusal = headers_too_large(self.max_header_bytes)
            raise _HeadTooLarge()  # stops the parser; uvicorn then calls send_400_response
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(self._refusal)
        else:
            super().send_400_response(msg)

    def _refuse(self, err: ProxyError) -> None:
        self.logger.warning("refused a request: %s", err.message)
        self.transport.write(err.http_close())
        self.transport.close()


def uvicorn_http_options(limits: RequestLimits) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: the head-limited protocol with the slow-client
    timers and the connection budget (read from the descriptor limit now, so call it after
    ``connections.raise_nofile``)."""
    burst = accept_burst(current_nofile())
    attrs = {
        "max_header_bytes": limits.max_header_bytes,
        "header_timeout_s": limits.header_timeout_s,
        "body_timeout_s": limits.body_timeout_s,
        "max_connections": limits.max_connections or current_budget(),
        "linger_slots": burst,
        "lingering": OrderedDict(),  # this server's own
    }
    protocol = type("ChimeraHttpProtocol", (GuardedHttpToolsProtocol, LimitedHttpToolsProtocol), attrs)
    # backlog: what asyncio accepts per readiness event, before any connection is counted
    return {"http": protocol, "h11_max_incomplete_event_size": limits.max_header_bytes, "backlog": burst}
