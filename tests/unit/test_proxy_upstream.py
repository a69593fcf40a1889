"""orchestrator/proxy/upstream.py against a real server: a scripted HTTP/1.1 engine on a free
loopback port (asyncio streams), so framing, keep-alive and closes are the real thing. The
engine's script decides each answer; tests wait on its events, never on wall time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.proxy.upstream import EngineClient, Limits, UpstreamError, UpstreamTimeout
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy import LLAMA
from tests.unit.test_proxy_stream import AsgiClient, sample

# (reader, writer, request body) -> keep the connection open for another request?
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


@dataclass
class Conn:
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Seen:
    conn: int  # index into TinyEngine.connections
    head: bytes
    body: bytes


class TinyEngine:
    """Serves every request on ``127.0.0.1:<free port>`` with ``script`` (one at a time per
    connection), recording connections (with an event set when each closes) and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[Conn] = []
        self.requests: list[Seen] = []
        self.url = ""

    async def __aenter__(self) -> TinyEngine:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn()
        self.connections.append(conn)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.requests.append(Seen(len(self.connections) - 1, head, body))
                if not await self.script(reader, writer, body):
                    return
        finally:
            writer.close()
            conn.closed.set()


def head(status: int = 200, *headers: str) -> bytes:
    return (f"HTTP/1.1 {status} OK\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


async def json_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
    payload = b'{"ok":true}'
    writer.write(
        head(200, "content-type: application/json", f"content-length: {len(payload)}", "set-cookie: session=engine")
        + payload
    )
    await writer.drain()
    return True


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)


SSE = head(200, "content-type: text/event-stream", "transfer-encoding: chunked")


async def read_all(resp: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in resp]


@pytest.fixture
async def client() -> AsyncIterator[EngineClient]:
    c = EngineClient()
    yield c
    await c.aclose()


async def test_keep_alive_reuses_one_connection_and_sends_one_clean_request(client: EngineClient) -> None:
    async with TinyEngine(json_answer) as engine:
        for i in range(3):
            resp = await client.post(engine.url, "/v1/completions", b'{"i":%d}' % i)
            assert (resp.status, resp.content_type) == (200, "application/json")
            assert await resp.read() == b'{"ok":true}'
            await resp.aclose()
        assert [s.conn for s in engine.requests] == [0, 0, 0]
        assert [s.body for s in engine.requests] == [b'{"i":0}', b'{"i":1}', b'{"i":2}']
        lines = engine.requests[0].head.lower().split(b"\r\n")
        assert lines[0] == b"post /v1/completions http/1.1"
        assert b"content-type: application/json" in lines and b"content-length: 7" in lines
        assert b"host: " + engine.url[7:].encode() in lines
        assert not any(line.startswith(b"cookie") for s in engine.requests for line in s.head.lower().split(b"\r\n"))
        assert client.idle_connections(engine.url) == 1
        await client.aclose()
        await engine.connections[0].closed.wait()


async def test_chunked_body_is_decoded_and_passed_on_as_each_chunk_arrives(client: EngineClient) -> None:
    got_first = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(SSE + chunk(b"data: 1\n\n"))
        await got_first.wait()  # the client got chunk 1 before chunk 2 was even sent
        frame = chunk(b"data: 2\n\n", b";ext=1") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        for i in range(0, len(frame), 5):  # split across writes at odd places
            writer.write(frame[i : i + 5])
            await writer.drain()
        return True

    async with TinyEngine(stream) as engine:
        resp = await client.post(engine.url, "/v1/completions", b"{}")
        assert (resp.status, resp.content_type) == (200, "text/event-stream")
        chunks = []
        async for c in resp.iter_raw():
            chunks.append(c)
            got_first.set()
        await resp.aclose()
        assert chunks[0] == b"data: 1\n\n"
        assert b"".join(chunks) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        assert client.idle_connections(engine.url) == 1  # read to its end: kept


async def test_engine_closing_mid_stream_is_an_upstream_error_and_not_reused(client: EngineClient) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(SSE + chunk(b"data: 1\n\n"))
        await writer.drain()
        return False  # closes the connection

    async with TinyEngine(broken) as engine:
        resp = await client.post(engine.url, "/v1/completions", b"{}")
        chunks: list[bytes] = []
        with pytest.raises(UpstreamError, match="broke off"):
            async for c in resp.iter_raw():
                chunks.append(c)
        await resp.aclose()
        assert chunks == [b"data: 1\n\n"]
        assert client.idle_connections(engine.url) == 0


async def test_short_content_length_body_is_an_upstream_error(client: EngineClient) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(head(200, "content-length: 100") + b"0123456789")
        await writer.drain()
        return False

    async with TinyEngine(short) as engine:
        resp = await client.post(engine.url, "/generate", b"{}")
        with pytest.raises(UpstreamError, match="90 bytes before the end"):
            await resp.read()
        await resp.aclose()


async def test_closing_before_the_end_closes_the_connection(client: EngineClient) -> None:
    engine_saw_eof = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(SSE + chunk(b"data: 1\n\n"))
        await writer.drain()
        assert await reader.read() == b""  # blocks until the client closes
        engine_saw_eof.set()
        return False

    async with TinyEngine(endless) as engine:
        resp = await client.post(engine.url, "/v1/completions", b"{}")
        it = resp.iter_raw()
        assert await it.__anext__() == b"data: 1\n\n"
        await resp.aclose()  # the client left: the engine must see the close
        await engine_saw_eof.wait()
        assert client.idle_connections(engine.url) == 0


async def test_idle_connections_are_bounded_and_reused_last_in_first_out() -> None:
    client = EngineClient(Limits(max_idle=2))
    async with TinyEngine(json_answer) as engine:
        responses = [await client.post(engine.url, "/generate", b"{}") for _ in range(4)]
        assert len(engine.connections) == 4  # none idle yet: each request opened one
        for resp in responses:
            await resp.read()
            await resp.aclose()
        assert client.idle_connections(engine.url) == 2
        await engine.connections[0].closed.wait()  # the least recently used two are closed
        await engine.connections[1].closed.wait()
        resp = await client.post(engine.url, "/generate", b"{}")
        await resp.read()
        await resp.aclose()
        assert engine.requests[-1].conn == 3  # the most recently used
        await client.aclose()


async def test_connection_close_is_honoured(client: EngineClient) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(head(200, "content-length: 2", "connection: close") + b"{}")
        await writer.drain()
        return False

    async with TinyEngine(once) as engine:
        for _ in range(2):
            resp = await client.post(engine.url, "/generate", b"{}")
            assert await resp.read() == b"{}"
            await resp.aclose()
        assert [s.conn for s in engine.requests] == [0, 1]


async def test_request_on_a_connection_the_engine_dropped_is_sent_again(client: EngineClient) -> None:
    answered: list[int] = []

    async def first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        if body == b"drop":
            return False  # an idle connection closed by the engine as the request arrives
        answered.append(1)
        return await json_answer(reader, writer, body)

    async with TinyEngine(first_only) as engine:
        resp = await client.post(engine.url, "/generate", b"{}")
        await resp.read()
        await resp.aclose()
        engine.script = lambda r, w, b: first_only(r, w, b"drop" if len(engine.requests) == 2 else b)
        resp = await client.post(engine.url, "/generate", b"{}")  # reused, dropped, resent
        assert await resp.read() == b'{"ok":true}'
        await resp.aclose()
        assert [s.conn for s in engine.requests] == [0, 0, 1]

        engine.script = lambda r, w, b: first_only(r, w, b"drop")
        await client.aclose()  # a new connection that drops the request is an error
        with pytest.raises(UpstreamError, match="closed the connection without answering"):
            await client.post(engine.url, "/generate", b"{}")


async def test_refused_connection_is_an_upstream_error(client: EngineClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamError, match=f"connect to 127.0.0.1:{port}"):
        await client.post(f"http://127.0.0.1:{port}", "/generate", b"{}")


# -- the proxy app with EngineClient (no httpx transport) -----------------------------------


async def test_proxy_relays_a_stream_through_the_engine_client() -> None:
    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(SSE + chunk(b"data: a\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True

    async with TinyEngine(stream) as engine:
        router = FakeRouter((LLAMA,), base_url=engine.url)
        app = create_app(router, ChimeraMetrics())
        async with app.router.lifespan_context(app):
            t = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=t, base_url="http://proxy") as http:
                for _ in range(2):
                    resp = await http.post("/v1/completions", json={"model": "llama-1b", "prompt": "x", "stream": True})
                    assert resp.status_code == 200
                    assert resp.content == b"data: a\n\ndata: [DONE]\n\n"
                    assert resp.headers["x-chimera-instance"] == "llama@gpu0"
                    assert resp.headers["content-type"] == "text/event-stream"
        await engine.connections[0].closed.wait()  # lifespan end closed the idle connection
        assert [s.conn for s in engine.requests] == [0, 0]
        assert orjson.loads(engine.requests[0].body)["model"] == "served-llama"
        assert router.balanced


async def test_proxy_client_disconnect_closes_the_engine_connection() -> None:
    engine_saw_eof = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(SSE + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()
        engine_saw_eof.set()
        return False

    async with TinyEngine(endless) as engine:
        router = FakeRouter((LLAMA,), base_url=engine.url)
        metrics = ChimeraMetrics()
        app = create_app(router, metrics)
        async with app.router.lifespan_context(app):
            client = AsgiClient(app, "/v1/completions", {"model": "llama", "prompt": "x", "stream": True})
            task = asyncio.create_task(client.run())
            await client.got_chunk.wait()
            client.gone.set()
            await task
            await engine_saw_eof.wait()
        assert client.chunks == [b"data: 1\n\n"] and router.balanced
        assert sample(metrics, "chimera_requests_total", model="llama", route="/v1/completions", status="499") == 1


async def test_expired_idle_connections_are_closed_not_reused() -> None:
    client = EngineClient(Limits(keepalive_s=0.0))  # every idle connection is expired at once
    async with TinyEngine(json_answer) as engine:
        for _ in range(2):
            resp = await client.post(engine.url, "/generate", b"{}")
            await resp.read()
            await resp.aclose()
            assert client.idle_connections(engine.url) == 0
        await engine.connections[0].closed.wait()
        assert [s.conn for s in engine.requests] == [0, 1]
        await client.aclose()


async def test_an_interim_answer_is_an_error_never_a_reply_to_pass_on(client: EngineClient) -> None:
    """A 1xx before the final answer: refused (and its connection not pooled), so the final
    answer can never be read by the next request on that connection."""

    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(head(103, "link: </x>; rel=preload"))
        return await json_answer(reader, writer, body)

    async with TinyEngine(early_hints) as engine:
        with pytest.raises(UpstreamError, match="interim 103"):
            await client.post(engine.url, "/generate", b"{}")
        with pytest.raises(UpstreamError, match="interim 103"):
            await client.post(engine.url, "/generate", b"{}")
        assert len(engine.connections) == 2  # the first connection was not pooled


async def test_pools_of_engines_gone_quiet_are_dropped_when_a_new_engine_appears() -> None:
    """Engines get a new port at every start: a pool with nothing idle is dropped then, and an
    answer still in flight on it closes its connection instead of keeping it."""
    client = EngineClient(Limits(keepalive_s=0.0))
    async with TinyEngine(json_answer) as old, TinyEngine(json_answer) as new:
        in_flight = await client.post(old.url, "/generate", b"{}")
        resp = await client.post(new.url, "/generate", b"{}")  # a new engine URL
        await in_flight.read()
        await in_flight.aclose()
        await old.connections[0].closed.wait()  # closed, not pooled
        await resp.read()
        await resp.aclose()
    await client.aclose()


# ---- a hung engine: read and idle limits (short here; the defaults are minutes) -----------

HUNG = Limits(first_byte_s=0.1, idle_s=0.1)


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
    await reader.read()  # answers nothing until the proxy closes the connection
    return False


async def one_chunk_then_hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
    writer.write(SSE + chunk(b"data: 1\n\n"))
    await writer.drain()
    return await hang(reader, writer, body)


async def test_an_engine_that_never_answers_times_out_and_its_connection_is_closed() -> None:
    client = EngineClient(HUNG)
    async with TinyEngine(hang) as engine:
        with pytest.raises(UpstreamTimeout, match="no response head for 0.1 s"):
            await client.post(engine.url, "/v1/completions", b"{}")
        await engine.connections[0].closed.wait()
    assert client.idle_connections(engine.url) == 0
    await client.aclose()


async def test_a_stream_that_stops_times_out_after_its_last_chunk() -> None:
    client = EngineClient(HUNG)
    async with TinyEngine(one_chunk_then_hang) as engine:
        resp = await client.post(engine.url, "/v1/completions", b"{}")
        chunks: list[bytes] = []
        with pytest.raises(UpstreamTimeout, match="no body bytes for 0.1 s"):
            async for c in resp.iter_raw():
                chunks.append(c)
        await resp.aclose()
        assert chunks == [b"data: 1\n\n"]
        await engine.connections[0].closed.wait()
    await client.aclose()


async def test_time_spent_on_a_slow_client_is_not_engine_idleness() -> None:
    async def two_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(SSE + chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True

    client = EngineClient(HUNG)
    async with TinyEngine(two_chunks) as engine:
        resp = await client.post(engine.url, "/v1/completions", b"{}")
        got = []
        async for c in resp.iter_raw():
            got.append(c)
            await asyncio.sleep(0.3)  # the client is slow; the engine has sent everything
        await resp.aclose()
        assert got == [b"data: 1\n\n", b"data: 2\n\n"]
        assert client.idle_connections(engine.url) == 1  # read to its end: kept
    await client.aclose()


async def test_proxy_answers_504_for_a_hung_engine_and_ends_a_stuck_stream_with_an_error() -> None:
    for script, stream in ((hang, False), (one_chunk_then_hang, True)):
        async with TinyEngine(script) as engine:
            router = FakeRouter((LLAMA,), base_url=engine.url)
            app = create_app(router, ChimeraMetrics(), upstream_limits=HUNG)
            async with app.router.lifespan_context(app):
                t = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=t, base_url="http://proxy") as http:
                    body = {"model": "llama-1b", "prompt": "x", "stream": stream}
                    resp = await http.post("/v1/completions", json=body)
            if stream:
                assert resp.status_code == 200
                assert resp.text.startswith("data: 1\n\n") and resp.text.endswith("data: [DONE]\n\n")
                assert '"error"' in resp.text and "engine" in resp.text
            else:
                assert resp.status_code == 504
                assert resp.json()["error"]["code"] == "engine_timeout"
            assert router.balanced
            # whichever sees a hang first reports it: the loop then probes the engine
            assert [iid for iid, _ in router.suspects] == ["llama@gpu0"]


async def test_idle_connections_close_when_they_expire_with_no_further_request() -> None:
    """After a burst, nothing more comes: the pooled connections close by themselves at their
    expiry (the engine sees them close), not at the next request."""
    client = EngineClient(Limits(keepalive_s=0.05))
    async with TinyEngine(json_answer) as engine:
        answers = [await client.post(engine.url, "/generate", b"{}") for _ in range(3)]
        for resp in answers:
            await resp.read()
            await resp.aclose()
        assert client.idle_connections(engine.url) == 3
        await asyncio.wait_for(asyncio.gather(*(c.closed.wait() for c in engine.connections)), 5)
        assert client.idle_connections(engine.url) == 0
        await client.aclose()
