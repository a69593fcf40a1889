"""Request limits: the body (413, counted while read) and the head (431, counted below the
HTTP parser of a real uvicorn server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from orchestrator.env import Env
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.proxy.errors import ProxyError
from orchestrator.proxy.limits import RequestLimits, read_limited, uvicorn_http_options
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy import LLAMA, QWEN, FakeEngine, engine_transport


class Chunks:
    """An ASGI receive that hands out body chunks and counts how many were asked for."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.reads = 0

    async def __call__(self) -> Message:
        i = self.reads
        self.reads += 1
        return {"type": "http.request", "body": self.chunks[i], "more_body": i < len(self.chunks) - 1}


async def test_a_body_at_the_limit_is_read_whole() -> None:
    receive = Chunks([b"a" * 4, b"b" * 4])
    assert await read_limited({"headers": []}, receive, 8) == b"aaaabbbb"


async def test_a_body_over_the_limit_stops_being_read() -> None:
    receive = Chunks([b"a" * 6, b"b" * 6, b"c" * 6, b"d" * 6])
    with pytest.raises(ProxyError) as info:
        await read_limited({"headers": []}, receive, 8)
    assert info.value.status == 413 and info.value.code == "body_too_large"
    assert receive.reads == 2  # the chunk that crossed the limit was the last one read


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    receive = Chunks([b"x"])
    with pytest.raises(ProxyError) as info:
        await read_limited({"headers": [(b"content-length", b"9")]}, receive, 8)
    assert info.value.status == 413 and receive.reads == 0


async def test_proxy_answers_413_in_the_envelope_and_never_calls_the_engine() -> None:
    router, engine = FakeRouter((LLAMA, QWEN)), FakeEngine()
    app = create_app(router, ChimeraMetrics(), transport=engine_transport(engine), max_body_bytes=1000)
    async with app.router.lifespan_context(app):
        t = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=t, base_url="http://proxy") as client:
            small = await client.post("/v1/completions", json={"model": "llama", "prompt": "x" * 100})
            big = await client.post("/v1/completions", json={"model": "llama", "prompt": "x" * 2000})
    assert small.status_code == 200
    assert big.status_code == 413
    err = big.json()["error"]
    assert err["code"] == "body_too_large" and err["src"] == "chimera" and "1000 bytes" in err["message"]
    assert len(engine.seen) == 1 and len(router.acquired) == 1


async def _ok(request: Request) -> Response:
    return Response(b"ok")


@asynccontextmanager
async def uvicorn_server(app: Starlette, limits: RequestLimits) -> AsyncIterator[int]:
    """A real uvicorn server (httptools) with the proxy's HTTP options for ``limits``; yields
    its port (also test_proxy_connections.py)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="critical", lifespan="off", **uvicorn_http_options(limits)
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)  # its startup, not a wall-clock assertion
    try:
        yield srv.servers[0].sockets[0].getsockname()[1]
    finally:
        srv.should_exit = True
        await task


def server(max_header_bytes: int) -> AbstractAsyncContextManager[int]:
    return uvicorn_server(Starlette(routes=[Route("/", _ok)]), RequestLimits(max_header_bytes=max_header_bytes))


async def _exchange(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)  # until the server closes
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_headers_over_the_limit_are_431_in_the_envelope() -> None:
    async with server(4096) as port:
        ok = await _exchange(
            port, b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 3000 + b"\r\nconnection: close\r\n\r\n"
        )
        # one header far larger than the limit, never terminated: refused while it arrives
        big = await _exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 10_000)
    assert ok.startswith(b"HTTP/1.1 200")
    assert big.startswith(b"HTTP/1.1 431 "), big[:100]
    err = orjson.loads(big.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["code"] == "headers_too_large" and "4096 bytes" in err["message"]


async def test_many_small_headers_count_too() -> None:
    async with server(4096) as port:
        head = b"GET / HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(1000)) + b"\r\n"
        resp = await _exchange(port, head)
    assert resp.startswith(b"HTTP/1.1 431 ")


def test_limits_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Env.read().max_body_bytes, Env.read().max_header_bytes) == (32 * 1024 * 1024, 64 * 1024)
    monkeypatch.setenv("CHIMERA_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("CHIMERA_MAX_HEADER_BYTES", "2000")
    assert (Env.read().max_body_bytes, Env.read().max_header_bytes) == (1000, 2000)
    monkeypatch.setenv("CHIMERA_MAX_BODY_BYTES", "lots")
    with pytest.raises(ValueError, match="CHIMERA_MAX_BODY_BYTES"):
        Env.read()
