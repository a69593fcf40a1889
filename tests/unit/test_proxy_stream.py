"""Streaming relay and client disconnects, driven at the ASGI level so that every message the
proxy sends is seen as sent and the client can leave at a chosen moment. The engine is an
httpx.MockTransport whose streamed body is a generator the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import Message

from orchestrator.config import ModelSpec, Placement
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.shapes import load_shape
from tests.unit.proxy_fakes import FakeRouter

LLAMA = ModelSpec(
    name="llama",
    model_path="meta-llama/Llama-3.2-1B",
    shape=load_shape("tiny-llama"),
    aliases=("l",),
    placements=(Placement((0,)),),
)
TIMEOUT_S = 5.0  # a safety net for a hung test, never waited out when the proxy is right


def frame(content: str) -> bytes:
    obj = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "served-llama",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class EngineStream(httpx.AsyncByteStream):
    """An engine's streamed body: ``chunks``, each after ``gate`` (if given) is set, then either
    the end, a failure (``fail``), or a hang until cancelled (``hang``)."""

    def __init__(
        self,
        chunks: list[bytes],
        *,
        gates: dict[int, asyncio.Event] | None = None,
        fail: Exception | None = None,
        hang: bool = False,
    ) -> None:
        self.chunks, self.gates, self.fail, self.hang = chunks, gates or {}, fail, hang
        self.cancelled = False
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for i, chunk in enumerate(self.chunks):
                if i in self.gates:
                    await self.gates[i].wait()
                yield chunk
            if self.fail is not None:
                raise self.fail
            if self.hang:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def aclose(self) -> None:
        self.closed = True


class Engine:
    """MockTransport handler: records requests, answers with ``respond``."""

    def __init__(self, respond: Callable[[], Awaitable[httpx.Response]]) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.respond = respond
        self.transport = httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.path, orjson.loads(request.content)))
        return await self.respond()


def sse_engine(stream: EngineStream) -> Engine:
    async def respond() -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    return Engine(respond)


class AsgiClient:
    """Sends one POST to an ASGI app and records every message the app sends. The client
    leaves when ``gone`` is set (the server then reports http.disconnect), as servers also
    report once the response is complete."""

    def __init__(self, app: Starlette, path: str, body: dict[str, Any]) -> None:
        self.app, self.path, self.body = app, path, orjson.dumps(body)
        self.messages: list[Message] = []
        self.gone = asyncio.Event()
        self.got_chunk = asyncio.Event()
        self._body_sent = False

    async def run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 5000),
            "server": ("proxy", 80),
        }
        await self.app(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body":
            if message.get("body"):
                self.got_chunk.set()
            if not message.get("more_body", False):
                self.gone.set()

    @property
    def status(self) -> int | None:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {k.decode(): v.decode() for k, v in start["headers"]}

    @property
    def chunks(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body" and m.get("body")]

    @property
    def completed(self) -> bool:
        return any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.messages)


def sample(metrics: ChimeraMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def run_with(app: Starlette, coro: Callable[[], Awaitable[None]]) -> None:
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(coro(), TIMEOUT_S)


@pytest.mark.parametrize(
    "path, body, upstream_body",
    [
        (
            "/v1/chat/completions",
            {"model": "l", "messages": [], "stream": True},
            {"model": "served-llama", "messages": [], "stream": True},
        ),
        ("/generate", {"model": "llama", "text": "hi", "stream": True}, {"text": "hi", "stream": True}),
    ],
)
async def test_stream_chunks_pass_through_unchanged_in_order(
    path: str,
    body: dict[str, Any],
    upstream_body: dict[str, Any],
) -> None:
    second = frame("lo")
    # the engine's chunk boundaries, one frame split in two, are kept as they are
    chunks = [frame("Hel"), second[:9], second[9:], b"data: [DONE]\n\n"]
    go_on = asyncio.Event()
    stream = EngineStream(chunks, gates={1: go_on})
    engine, router, metrics = sse_engine(stream), FakeRouter((LLAMA,)), ChimeraMetrics()
    app = create_app(router, metrics, transport=engine.transport)
    client = AsgiClient(app, path, body)

    async def scenario() -> None:
        task = asyncio.create_task(client.run())
        await client.got_chunk.wait()
        assert client.chunks == chunks[:1]  # relayed before the engine sent the rest
        go_on.set()
        await task

    await run_with(app, scenario)
    assert client.status == 200 and client.completed
    assert client.headers["content-type"] == "text/event-stream"
    assert client.chunks == chunks
    assert engine.seen == [(path, upstream_body)]
    assert stream.closed and not stream.cancelled
    assert len(router.acquired) == 1 and router.released == router.acquired
    assert sample(metrics, "chimera_requests_total", model="llama", route=path, status="200") == 1
    ttft = sample(metrics, "chimera_request_ttft_seconds_sum", model="llama")
    e2e = sample(metrics, "chimera_request_e2e_seconds_sum", model="llama")
    assert ttft is not None and e2e is not None and 0 <= ttft <= e2e
    assert sample(metrics, "chimera_requests_in_flight", model="llama") == 0


async def test_client_disconnect_mid_stream_closes_upstream_and_releases() -> None:
    stream = EngineStream([frame("Hel")], hang=True)
    engine, router, metrics = sse_engine(stream), FakeRouter((LLAMA,)), ChimeraMetrics()
    app = create_app(router, metrics, transport=engine.transport)
    client = AsgiClient(app, "/v1/chat/completions", {"model": "llama", "messages": [], "stream": True})

    async def scenario() -> None:
        task = asyncio.create_task(client.run())
        await client.got_chunk.wait()
        client.gone.set()
        await task

    await run_with(app, scenario)
    assert stream.cancelled and stream.closed  # the engine sees its connection closed
    assert client.chunks == [frame("Hel")] and not client.completed
    assert len(router.acquired) == 1 and router.released == router.acquired
    route = "/v1/chat/completions"
    assert sample(metrics, "chimera_requests_total", model="llama", route=route, status="499") == 1
    assert sample(metrics, "chimera_request_ttft_seconds_count", model="llama") == 1
    assert sample(metrics, "chimera_request_e2e_seconds_count", model="llama") in (None, 0)
    assert sample(metrics, "chimera_requests_in_flight", model="llama") == 0


async def test_client_disconnect_while_waiting_for_a_whole_answer() -> None:
    waiting, cancelled = asyncio.Event(), []

    async def respond() -> httpx.Response:
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        raise AssertionError("unreachable")

    engine, router, metrics = Engine(respond), FakeRouter((LLAMA,)), ChimeraMetrics()
    app = create_app(router, metrics, transport=engine.transport)
    client = AsgiClient(app, "/v1/completions", {"model": "llama", "prompt": "x"})

    async def scenario() -> None:
        task = asyncio.create_task(client.run())
        await waiting.wait()
        client.gone.set()
        await task

    await run_with(app, scenario)
    assert cancelled == [True] and client.messages == []
    assert len(router.acquired) == 1 and router.released == router.acquired
    assert sample(metrics, "chimera_requests_total", model="llama", route="/v1/completions", status="499") == 1


async def test_client_disconnect_while_held_cancels_the_hold() -> None:
    engine = sse_engine(EngineStream([]))
    router, metrics = FakeRouter((LLAMA,)), ChimeraMetrics()
    router.hold = asyncio.Event()
    app = create_app(router, metrics, transport=engine.transport)
    client = AsgiClient(app, "/v1/completions", {"model": "llama", "prompt": "x"})

    async def scenario() -> None:
        task = asyncio.create_task(client.run())
        await router.holding.wait()
        client.gone.set()
        await task

    await run_with(app, scenario)
    assert router.hold_cancelled and router.acquired == [] and router.released == []
    assert engine.seen == [] and client.messages == []
    assert sample(metrics, "chimera_requests_in_flight", model="llama") == 0
    assert sample(metrics, "chimera_requests_total", model="llama", route="/v1/completions", status="499") == 1


@pytest.mark.parametrize(
    "sent, separator",
    [
        ([frame("Hel")], b""),
        ([frame("Hel")[:12]], b"\n\n"),  # a frame cut short is terminated before the error frame
    ],
)
async def test_engine_breaking_off_a_stream_ends_it_with_an_error_frame(
    sent: list[bytes],
    separator: bytes,
) -> None:
    stream = EngineStream(sent, fail=httpx.RemoteProtocolError("peer closed connection"))
    engine, router, metrics = sse_engine(stream), FakeRouter((LLAMA,)), ChimeraMetrics()
    app = create_app(router, metrics, transport=engine.transport)
    client = AsgiClient(app, "/v1/chat/completions", {"model": "llama", "messages": [], "stream": True})
    await run_with(app, client.run)
    assert client.status == 200 and client.completed
    *relayed, last = client.chunks
    assert relayed == sent
    assert last.startswith(separator + b"data: ") and last.endswith(b"\n\ndata: [DONE]\n\n")
    err = orjson.loads(last[len(separator) + len(b"data: ") : -len(b"\n\ndata: [DONE]\n\n")])
    assert err["error"]["src"] == "engine" and err["error"]["code"] == "engine_unreachable"
    assert stream.closed
    assert len(router.acquired) == 1 and router.released == router.acquired
    assert sample(metrics, "chimera_requests_total", model="llama", route="/v1/chat/completions", status="502") == 1
    assert sample(metrics, "chimera_request_e2e_seconds_count", model="llama") in (None, 0)


async def test_engine_error_on_a_stream_request_is_an_envelope() -> None:
    async def respond() -> httpx.Response:
        return httpx.Response(
            400, json={"object": "error", "message": "bad n", "type": "BadRequestError", "param": "n", "code": 400}
        )

    engine, router = Engine(respond), FakeRouter((LLAMA,))
    app = create_app(router, ChimeraMetrics(), transport=engine.transport)
    client = AsgiClient(app, "/v1/chat/completions", {"model": "llama", "messages": [], "stream": True, "n": 0})
    await run_with(app, client.run)
    assert client.status == 400 and client.headers["content-type"] == "application/json"
    assert orjson.loads(b"".join(client.chunks)) == {
        "error": {
            "message": "bad n",
            "type": "invalid_request_error",
            "param": "n",
            "code": "bad_request",
            "src": "engine",
        }
    }
    assert len(router.acquired) == 1 and router.released == router.acquired


@pytest.mark.parametrize("split", [None, 9, 30])
async def test_engine_error_frame_in_a_stream_is_put_in_the_envelope(split: int | None) -> None:
    """SGLang's in-stream error keeps its message; its integer code becomes the envelope's."""
    err = {"error": {"message": "Requested token count exceeds", "type": "BadRequestError", "code": 400}}
    bad = b"data: " + orjson.dumps(err) + b"\n\n"
    pieces = [bad] if split is None else [bad[:split], bad[split:]]
    chunks = [frame("Hel"), *pieces, b"data: [DONE]\n\n"]
    engine, router = sse_engine(EngineStream(chunks)), FakeRouter((LLAMA,))
    app = create_app(router, ChimeraMetrics(), transport=engine.transport)
    client = AsgiClient(app, "/v1/chat/completions", {"model": "llama", "messages": [], "stream": True})
    await run_with(app, client.run)
    assert client.status == 200 and client.completed
    body = b"".join(client.chunks)
    frames = [f for f in body.split(b"\n\n") if f]
    assert frames[0] == frame("Hel").rstrip() and frames[-1] == b"data: [DONE]"
    assert orjson.loads(frames[1][len(b"data: ") :]) == {
        "error": {
            "message": "Requested token count exceeds",
            "type": "invalid_request_error",
            "param": None,
            "code": "bad_request",
            "src": "engine",
        }
    }
