"""The proxy's HTTP/1.1 client to the engines: keep-alive connection pools over asyncio streams.

Why not httpx: on the 2-core machine httpcore was the largest share of the proxy's CPU at 64
streams (py-spy): its pool scans every connection on every request and response close, h11
builds an event object per chunk and anyio opens a cancel scope per read. The proxy needs far
less: one POST with a JSON body to a loopback engine, the status and content-type of the
answer, then its body as bytes. docs/bench-live.md has the measurements.

What it does:
- one ``_Pool`` per engine base URL; its idle connections form a LIFO list (the most recently
  used first, so the least used ones expire) of at most ``max_idle``; there is no bound on open
  connections: how many requests an engine takes at once is the control loop's decision
  (``Router.acquire``), never the pool's;
- the request head and body go out in one write; the response head is read and parsed once;
- the body comes out as the engine framed its payload: ``Content-Length`` bytes, chunked
  transfer decoded (uvicorn, so SGLang and the sim engine, streams SSE chunked), or everything
  up to the close; no content decoding (``accept-encoding: identity`` is sent);
- a response that is closed before its body was read to the end closes its connection: that
  is how an engine learns that the client left (SGLang aborts the request);
- an idle connection the engine closed (uvicorn closes idle keep-alive connections after 5 s)
  may fail on reuse before any byte of the answer arrives: the request is then sent once more
  on a new connection (the engine never saw it).

Errors (all ``UpstreamError``, translated where they enter, with the cause kept):
- ``UpstreamTimeout``: connect or write took longer than its limit, the engine sent no
  response head within ``first_byte_s`` or nothing for ``idle_s`` while the proxy waited on the
  body (a hung engine: the proxy answers 504, or ends a stream with an error event);
- ``UpstreamError``: refused, reset, closed mid-answer, malformed answer (502).

One event loop uses a client: no locks. Cancellation at any await closes the connection in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from orchestrator.proxy.watchdog import Watchdog

log = logging.getLogger("chimera.proxy")


class UpstreamError(Exception):
    """Talking to an engine failed (transient for the request: the engine may be gone)."""


class UpstreamTimeout(UpstreamError):
    """Connecting, writing, or waiting for the engine's answer took longer than its limit."""


class UpstreamResponse(Protocol):
    """An engine's answer with its body still to be read; ``aclose()`` must always be called."""

    status: int
    content_type: str | None

    async def read(self) -> bytes: ...

    def iter_raw(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """What forward.py needs from a client to the engines (this module's ``EngineClient``, or
    the httpx adapter that tests use with a fake engine)."""

    async def post(self, base_url: str, path: str, body: bytes) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """``connect_s``: engines are on loopback, so a connect that takes seconds means the engine
    is gone. ``write_s``: sending a request body. ``first_byte_s``: until the response head (a
    non-streamed answer comes whole, so this bounds a whole generation: generous).
    ``idle_s``: the longest the body may pause while the proxy waits for it (a stream's first
    token comes after the prefill of a long prompt in a busy engine: generous too); time spent
    waiting for a slow client does not count. ``keepalive_s``: how long an
    idle connection is reused; below uvicorn's 5 s ``timeout_keep_alive`` so that the engine
    rarely closes one first. ``max_idle``: idle connections kept per engine."""

    connect_s: float = 10.0
    write_s: float = 60.0
    first_byte_s: float = 600.0
    idle_s: float = 300.0
    keepalive_s: float = 4.0
    max_idle: int = 1024


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.transport.close()

    def usable(self, now: float, keepalive_s: float) -> bool:
        return (
            now - self.idle_since < keepalive_s and not self.reader.at_eof() and not self.writer.transport.is_closing()
        )


class _Pool:
    """Connections to one engine (one host and port)."""

    def __init__(self, base_url: str, limits: Limits) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise UpstreamError(f"engine URL {base_url!r}: only http://host:port is supported")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.limits = limits
        self.idle: deque[_Conn] = deque()
        self.host_header = parts.netloc.encode("ascii")
        self.retired = False
        self._expiry: asyncio.TimerHandle | None = None  # the next sweep while anything is idle

    async def checkout(self) -> tuple[_Conn, bool]:
        """A connection and whether it was used before."""
        now = time.monotonic()
        idle, keepalive_s = self.idle, self.limits.keepalive_s
        while idle:
            conn = idle.pop()
            if conn.usable(now, keepalive_s):
                return conn, True
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.limits.connect_s
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"connect to {self.host}:{self.port} timed out after {self.limits.connect_s:g} s"
            ) from exc
        except OSError as exc:
            raise UpstreamError(f"connect to {self.host}:{self.port}: {exc}") from exc
        return _Conn(reader, writer), False

    def checkin(self, conn: _Conn) -> None:
        if self.retired:  # dropped by its client (engine likely gone): nothing to keep alive
            conn.close()
            return
        conn.idle_since = now = time.monotonic()
        idle = self.idle
        idle.append(conn)
        if len(idle) > self.limits.max_idle:
            idle.popleft().close()  # the least recently used
        self.sweep(now, limit=1)
        if self._expiry is None:
            self._arm_expiry(now)

    def _arm_expiry(self, now: float) -> None:
        """Idle connections close when they expire even if no request comes (a burst would
        otherwise leave its connections open, half-closed by the engine, until the next one)."""
        if self.idle:
            due = self.idle[0].idle_since + self.limits.keepalive_s - now
            self._expiry = asyncio.get_running_loop().call_later(max(0.0, due), self._expire)

    def _expire(self) -> None:
        self._expiry = None
        now = time.monotonic()
        self.sweep(now)
        self._arm_expiry(now)

    def sweep(self, now: float, limit: int | None = None) -> None:
        """Closes expired idle connections, least recently used first (``limit``: at most so
        many; checkin closes one, so a busy pool sheds its surplus gradually)."""
        idle, keepalive_s = self.idle, self.limits.keepalive_s
        while idle and (limit is None or limit > 0) and now - idle[0].idle_since >= keepalive_s:
            idle.popleft().close()
            limit = None if limit is None else limit - 1

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        while self.idle:
            self.idle.pop().close()


class _Response:
    """One answer on one connection. Its body is read by ``read()`` or ``iter_raw()``; then
    ``aclose()`` returns the connection to its pool if the answer was read to its end and the
    connection may be kept, and closes it otherwise."""

    def __init__(
        self,
        pool: _Pool,
        conn: _Conn,
        status: int,
        content_type: str | None,
        length: int | None,
        chunked: bool,
        keep_alive: bool,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._pool, self._conn = pool, conn
        self._watchdog = watchdog
        self.status = status
        self.content_type = content_type
        self._length = length  # None: chunked, or up to the close
        self._chunked = chunked
        self._keep_alive = keep_alive and (chunked or length is not None)
        self._done = length == 0 and not chunked
        self._closed = False

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_raw()])

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """The body as the engine sends it (transfer framing removed), piece by piece."""
        if self._done:
            return
        reader = self._conn.reader
        wd = self._watchdog
        try:
            if wd is not None:
                wd.switch(self._pool.limits.idle_s, "no body bytes")
            if self._chunked:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    size = int(line.split(b";", 1)[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass  # trailers: none expected, skipped
                        break
                    data = await reader.readexactly(size + 2)
                    if data[-2:] != b"\r\n":
                        raise UpstreamError("malformed chunked body from the engine")
                    if wd is not None:
                        wd.pause()
                    yield data[:-2]
                    if wd is not None:
                        wd.progress()
            elif self._length is not None:
                left = self._length
                while left:
                    data = await reader.read(min(left, 65536))
                    if not data:
                        raise UpstreamError(f"engine closed the connection {left} bytes before the end of its answer")
                    left -= len(data)
                    if wd is not None:
                        wd.pause()
                    yield data
                    if wd is not None:
                        wd.progress()
            else:
                while data := await reader.read(65536):
                    if wd is not None:
                        wd.pause()
                    yield data
                    if wd is not None:
                        wd.progress()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, UpstreamError) as exc:
            if wd is not None and wd.fired:
                raise UpstreamTimeout(wd.describe()) from exc
            if isinstance(exc, UpstreamError):
                raise
            raise UpstreamError(f"engine broke off its answer: {type(exc).__name__}: {exc}") from exc
        if wd is not None:
            wd.cancel()
            if wd.fired:  # read up to the close: the close was the watchdog's
                raise UpstreamTimeout(wd.describe())
        self._done = True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._done and self._keep_alive:
            self._pool.checkin(self._conn)
        else:
            self._conn.close()


class EngineClient:
    """Keep-alive pools to every engine the proxy talks to, created on first use per base URL.
    Created and closed by the app's lifespan (app.py)."""

    def __init__(self, limits: Limits | None = None, headers: Mapping[str, str] | None = None) -> None:
        self.limits = limits or Limits()
        self._pools: dict[str, _Pool] = {}
        # extra header lines of every request (the engines' API key, sglang/auth.py)
        self._extra = b"".join(f"\r\n{k.lower()}: {v}".encode("latin-1") for k, v in (headers or {}).items())

    def idle_connections(self, base_url: str) -> int:
        pool = self._pools.get(base_url)
        return 0 if pool is None else len(pool.idle)

    async def post(self, base_url: str, path: str, body: bytes) -> UpstreamResponse:
        """POST ``body`` (JSON) to ``base_url + path``; raises UpstreamError. The answer's body
        is still to be read; the caller must ``aclose()`` it."""
        pool = self._pools.get(base_url)
        if pool is None:
            # A new engine (instances get new ports): close what is left idle to the others,
            # e.g. to a stopped engine, whose closed sockets would otherwise stay open here.
            # Pools left with nothing idle are dropped (engines get a new port at every start,
            # so the table would otherwise grow for ever); answers still in flight close their
            # connection instead of returning it.
            now = time.monotonic()
            for url, other in list(self._pools.items()):
                other.sweep(now)
                if not other.idle:
                    other.retired = True
                    del self._pools[url]
            pool = self._pools[base_url] = _Pool(base_url, self.limits)
        message = b"".join(
            (
                b"POST ",
                path.encode("ascii"),
                b" HTTP/1.1\r\nhost: ",
                pool.host_header,
                self._extra,
                b"\r\ncontent-type: application/json\r\naccept-encoding: identity\r\ncontent-length: ",
                str(len(body)).encode("ascii"),
                b"\r\n\r\n",
                body,
            )
        )
        while True:
            conn, reused = await pool.checkout()
            try:
                return await self._exchange(pool, conn, message)
            except _StaleConnection as exc:
                conn.close()
                if not reused:
                    raise UpstreamError(
                        f"engine at {base_url} closed the connection without answering: {exc.__cause__!r}"
                    ) from exc.__cause__
                # an idle connection the engine had closed: send again on a new one
                log.debug("%s: pooled connection was closed (%r); sending again", base_url, exc.__cause__)
            except BaseException:
                conn.close()
                raise

    async def _exchange(self, pool: _Pool, conn: _Conn, message: bytes) -> _Response:
        writer = conn.writer
        try:
            writer.write(message)
            if writer.transport.get_write_buffer_size():
                await asyncio.wait_for(writer.drain(), self.limits.write_s)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"sending the request took over {self.limits.write_s:g} s") from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _StaleConnection() from exc
        except OSError as exc:
            raise UpstreamError(f"sending the request: {exc}") from exc
        wd = Watchdog(conn.close, self.limits.first_byte_s, "no response head")
        try:
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except BaseException as exc:
            wd.cancel()
            if wd.fired:
                raise UpstreamTimeout(wd.describe()) from exc
            if isinstance(exc, asyncio.IncompleteReadError):
                if exc.partial:
                    raise UpstreamError("engine closed the connection in its response head") from exc
                raise _StaleConnection() from exc
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise _StaleConnection() from exc
            if isinstance(exc, (OSError, asyncio.LimitOverrunError)):
                raise UpstreamError(f"reading the engine's response head: {exc}") from exc
            raise
        try:
            return _parse_head(pool, conn, head, wd)
        except BaseException:
            wd.cancel()
            raise

    async def aclose(self) -> None:
        """Closes the idle connections; connections in use close with their responses."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


class _StaleConnection(Exception):
    """The connection failed before any byte of an answer: the engine never took the request."""


def _parse_head(pool: _Pool, conn: _Conn, head: bytes, watchdog: Watchdog | None = None) -> _Response:
    lines = head[:-4].split(b"\r\n")
    status_line = lines[0]
    if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
        raise UpstreamError(f"engine answered with a malformed status line {status_line[:80]!r}")
    try:
        status = int(status_line[9:12])
    except ValueError as exc:
        raise UpstreamError(f"malformed status line {status_line[:80]!r}") from exc
    if 100 <= status < 200:  # interim answers (103 Early Hints): never sent for our requests;
        # passing one on would leave the final answer unread on a pooled connection
        raise UpstreamError(f"engine sent an interim {status} answer; chimera does not take them")
    keep_alive = status_line[7:8] == b"1"  # HTTP/1.1; HTTP/1.0 closes by default
    content_type: str | None = None
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise UpstreamError(f"engine sent a malformed header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError as exc:
                raise UpstreamError(f"engine sent content-length {value[:40]!r}") from exc
        elif name == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif name == b"connection":
            if b"close" in value.lower():
                keep_alive = False
    if chunked:
        length = None
    elif status in (204, 304):
        length = 0
    return _Response(pool, conn, status, content_type, length, chunked, keep_alive, watchdog)


class HttpxUpstream:
    """The same interface over one httpx transport: the test seam (``httpx.MockTransport`` or
    an ``ASGITransport`` as a fake engine; create_app's ``transport``). httpx errors are
    translated to UpstreamError / UpstreamTimeout here."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        limits: Limits | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        limits = limits or Limits()
        self.transport = transport
        self.headers = {"content-type": "application/json", "accept-encoding": "identity", **(headers or {})}
        self._extensions = {
            # one read limit in httpx: per read, head and body alike
            "timeout": httpx.Timeout(
                connect=limits.connect_s, read=limits.first_byte_s, write=limits.write_s, pool=None
            ).as_dict()
        }

    async def post(self, base_url: str, path: str, body: bytes) -> UpstreamResponse:
        request = httpx.Request(
            "POST",
            base_url + path,
            content=body,
            extensions=self._extensions,
            headers=self.headers,
        )
        try:
            return _HttpxResponse(await self.transport.handle_async_request(request))
        except httpx.TransportError as exc:
            raise _translate(exc) from exc

    async def aclose(self) -> None:
        await self.transport.aclose()


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.content_type = response.headers.get("content-type")

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.TransportError as exc:
            raise _translate(exc) from exc

    async def iter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            raise _translate(exc) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


def _translate(exc: httpx.TransportError) -> UpstreamError:
    kind = UpstreamTimeout if isinstance(exc, httpx.TimeoutException) else UpstreamError
    return kind(f"{type(exc).__name__}: {exc}")
