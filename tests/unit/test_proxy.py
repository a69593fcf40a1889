"""The proxy app against a fake Router and a fake engine (a Starlette app behind
httpx.ASGITransport, or httpx.MockTransport for transport failures). Streaming and client
disconnects are in test_proxy_stream.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from orchestrator.config import ModelSpec, Placement
from orchestrator.errors import EngineUnavailable
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.proxy.body import MAX_JSON_DEPTH
from orchestrator.shapes import load_shape
from orchestrator.types import InstanceState
from tests.unit.proxy_fakes import FakeRouter

SHAPE = load_shape("tiny-llama")
LLAMA = ModelSpec(
    name="llama",
    model_path="meta-llama/Llama-3.2-1B",
    shape=SHAPE,
    aliases=("llama-1b", "org/llama:latest"),
    placements=(Placement((0,)),),
)
QWEN = ModelSpec(name="qwen", model_path="Qwen/Qwen2.5-7B-Instruct", shape=SHAPE, placements=(Placement((1,)),))
ENVELOPE_KEYS = {"message", "type", "param", "code", "src"}


CHAT = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "served-llama",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
COMPLETION = {
    "id": "t1",
    "object": "text_completion",
    "created": 1,
    "model": "served-llama",
    "choices": [{"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}],
}


def chat_chunk(content: str) -> bytes:
    obj = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "served-llama",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class FakeEngine:
    """SGLang's routes, recording what arrives. ``error``: answer this (status, body) instead."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.error: tuple[int, bytes] | None = None
        self.app = Starlette(
            routes=[
                Route(p, self.handle, methods=["POST"])
                for p in ("/v1/chat/completions", "/v1/completions", "/generate")
            ]
        )

    async def handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.seen.append((request.url.path, body))
        if self.error is not None:
            return Response(self.error[1], self.error[0], media_type="application/json")
        if body.get("stream"):

            async def sse() -> AsyncIterator[bytes]:
                for word in ("Hel", "lo"):
                    yield chat_chunk(word)
                yield b"data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        reply = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION}.get(
            request.url.path, {"text": "generated", "meta_info": {"id": "g1"}}
        )
        return Response(orjson.dumps(reply), media_type="application/json")


@asynccontextmanager
async def proxy(
    router: FakeRouter,
    transport: httpx.AsyncBaseTransport,
    metrics: ChimeraMetrics | None = None,
    raise_app_exceptions: bool = True,
    hold_timeout_s: float = 300.0,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(router, metrics or ChimeraMetrics(), transport=transport, hold_timeout_s=hold_timeout_s)
    async with app.router.lifespan_context(app):  # ASGITransport does not run lifespan
        t = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=t, base_url="http://proxy") as client:
            yield client


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter((LLAMA, QWEN))


def engine_transport(engine: FakeEngine) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=engine.app)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) >= ENVELOPE_KEYS, body
    err: dict[str, Any] = body["error"]
    return err


async def test_models_shows_why_a_failed_model_failed(router: FakeRouter, engine: FakeEngine) -> None:
    router.states["qwen"] = InstanceState.FAILED
    router.errors["qwen"] = "engine process exited with code -9; gave up after 5 failures within 300 s"
    router.errors["llama"] = "an old error of an instance that serves again"
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.get("/v1/models")
    by_id = {m["id"]: m for m in resp.json()["data"]}
    assert by_id["qwen"]["error"] == "qwen@gpu0: " + router.errors["qwen"]
    assert "error" not in by_id["llama"]


async def test_models_lists_names_and_aliases_with_state(router: FakeRouter, engine: FakeEngine) -> None:
    router.states["qwen"] = InstanceState.PARKED
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.get("/v1/models")
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["llama", "llama-1b", "org/llama:latest", "qwen"]
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["llama-1b"]["root"] == "llama" and by_id["llama-1b"]["state"] == "awake"
    assert by_id["qwen"]["state"] == "parked"
    for m in body["data"]:
        assert m["object"] == "model" and m["owned_by"] == "chimera"
        assert isinstance(m["created"], int)


async def test_unknown_model_is_404_listing_known_models(router: FakeRouter, engine: FakeEngine) -> None:
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": []})
    assert resp.status_code == 404
    err = error_of(resp)
    assert err["code"] == "model_not_found" and err["src"] == "chimera"
    for name in ("gpt-9", "llama", "llama-1b", "qwen"):
        assert name in err["message"]
    assert router.acquired == [] and engine.seen == []


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'"llama"', "invalid_body"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": 3}', "missing_model"),
        (b'{"model": ""}', "missing_model"),
        (b'{"model": "llama", "stream": 1}', "invalid_stream"),
        (b'{"model": "llama", "stream": "true"}', "invalid_stream"),
        (b'{"model": "llama", "stream": {}}', "invalid_stream"),
    ],
)
async def test_bad_bodies_are_400(router: FakeRouter, engine: FakeEngine, raw: bytes, code: str) -> None:
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.post("/v1/completions", content=raw)
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["code"] == code and err["type"] == "invalid_request_error"
    assert err["src"] == "chimera"
    assert router.acquired == []


def nested(levels: int) -> bytes:
    """A request body whose deepest value sits ``levels`` objects/arrays down (the body is one)."""
    return b'{"model": "llama", "prompt": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


async def test_nesting_up_to_the_limit_is_forwarded(router: FakeRouter, engine: FakeEngine) -> None:
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.post("/v1/completions", content=nested(MAX_JSON_DEPTH))
    assert resp.status_code == 200


# 255: the first depth the re-encoder refuses; 1023: the deepest the decoder accepts (both
# answered 500 with a traceback in the log); 1025: the decoder's own refusal
@pytest.mark.parametrize("levels, code", [(255, "json_too_deep"), (1023, "json_too_deep"), (1025, "invalid_json")])
async def test_nesting_deeper_than_the_limit_is_400(
    router: FakeRouter, engine: FakeEngine, levels: int, code: str
) -> None:
    async with proxy(router, engine_transport(engine), raise_app_exceptions=False) as client:
        resp = await client.post("/v1/completions", content=nested(levels))
    assert resp.status_code == 400
    assert error_of(resp)["code"] == code
    assert router.acquired == [] and engine.seen == []


@pytest.mark.parametrize("stream", [False, None])
async def test_stream_false_or_null_is_not_streamed(
    router: FakeRouter, engine: FakeEngine, stream: bool | None
) -> None:
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.post("/v1/completions", json={"model": "llama", "prompt": "hi", "stream": stream})
    assert resp.status_code == 200 and resp.json() == COMPLETION


@pytest.mark.parametrize("path, reply", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_model_is_rewritten_to_served_name(
    router: FakeRouter, engine: FakeEngine, path: str, reply: dict[str, Any]
) -> None:
    request = {"model": "org/llama:latest", "prompt": "hi", "max_tokens": 4, "temperature": 0}
    async with proxy(router, engine_transport(engine), hold_timeout_s=12.5) as client:
        resp = await client.post(path, json=request)
    assert resp.status_code == 200
    assert resp.json() == reply
    assert resp.headers["x-chimera-instance"] == "llama@gpu0"
    assert engine.seen == [(path, {**request, "model": "served-llama"})]
    assert router.timeouts == [12.5]  # the hold timeout reaches acquire
    assert len(router.acquired) == 1 and router.balanced


async def test_generate_is_routed_by_model_which_is_removed(router: FakeRouter, engine: FakeEngine) -> None:
    request = {"model": "qwen", "text": "hi", "sampling_params": {"max_new_tokens": 4}}
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.post("/generate", json=request)
    assert resp.status_code == 200 and resp.json()["text"] == "generated"
    assert engine.seen == [("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 4}})]
    assert router.acquired[0].instance_id == "qwen@gpu0" and router.balanced


async def test_engine_unavailable_is_503_with_retry_after(router: FakeRouter, engine: FakeEngine) -> None:
    router.unavailable = EngineUnavailable("llama is waking up", retry_after_s=2.2)
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.post("/v1/completions", json={"model": "llama", "prompt": "x"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "3"
    err = error_of(resp)
    assert "waking" in err["message"] and err["code"] == "model_unavailable"
    assert router.acquired == [] and router.released == [] and engine.seen == []


@pytest.mark.parametrize(
    "exc, status, code",
    [
        (httpx.ConnectError("connection refused"), 502, "engine_unreachable"),
        (httpx.RemoteProtocolError("server disconnected"), 502, "engine_unreachable"),
        (httpx.ReadTimeout("read timed out"), 504, "engine_timeout"),
    ],
)
async def test_engine_transport_failures(router: FakeRouter, exc: Exception, status: int, code: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    async with proxy(router, httpx.MockTransport(fail)) as client:
        resp = await client.post("/v1/chat/completions", json={"model": "llama"})
    assert resp.status_code == status
    err = error_of(resp)
    assert err["src"] == "engine" and err["code"] == code and "llama@gpu0" in err["message"]
    assert len(router.acquired) == 1 and router.balanced
    # only a timeout may mean a hung engine: the owner is asked to check it
    assert [iid for iid, _ in router.suspects] == (["llama@gpu0"] if status == 504 else [])


@pytest.mark.parametrize(
    "status, body, expect",
    [
        # SGLang's OpenAI routes
        (
            400,
            b'{"object": "error", "message": "max_tokens too large", "type": "BadRequestError",'
            b' "param": null, "code": 400}',
            {
                "message": "max_tokens too large",
                "type": "invalid_request_error",
                "param": None,
                "code": "bad_request",
                "src": "engine",
            },
        ),
        # SGLang's /generate: already an envelope, missing fields filled in
        (
            400,
            b'{"error": {"message": "bad sampling params"}}',
            {
                "message": "bad sampling params",
                "type": "invalid_request_error",
                "param": None,
                "code": "bad_request",
                "src": "engine",
            },
        ),
        (
            500,
            b"Internal Server Error",
            {
                "message": "Internal Server Error",
                "type": "server_error",
                "param": None,
                "code": "internal_server_error",
                "src": "engine",
            },
        ),
    ],
)
async def test_engine_errors_are_normalized(
    router: FakeRouter, engine: FakeEngine, status: int, body: bytes, expect: dict[str, Any]
) -> None:
    engine.error = (status, body)
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.post("/v1/completions", json={"model": "llama", "prompt": "x"})
    assert resp.status_code == status
    assert resp.json() == {"error": expect}
    assert len(router.acquired) == 1 and router.balanced


async def test_router_exception_is_500_without_traceback(
    router: FakeRouter,
    engine: FakeEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router.resolve_error = RuntimeError("secret internal detail")
    with caplog.at_level(logging.ERROR):
        async with proxy(router, engine_transport(engine)) as client:
            resp = await client.post("/v1/chat/completions", json={"model": "llama"})
    assert resp.status_code == 500
    assert error_of(resp)["code"] == "internal_error"
    assert "Traceback" not in resp.text and "secret" not in resp.text
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)


async def test_unexpected_exception_elsewhere_is_500_envelope(router: FakeRouter, engine: FakeEngine) -> None:
    router.models_error = RuntimeError("secret")
    async with proxy(router, engine_transport(engine), raise_app_exceptions=False) as client:
        resp = await client.get("/v1/models")
    assert resp.status_code == 500
    assert error_of(resp)["code"] == "internal_error" and "secret" not in resp.text


async def test_unknown_route_and_wrong_method_use_the_envelope(router: FakeRouter, engine: FakeEngine) -> None:
    async with proxy(router, engine_transport(engine)) as client:
        missing = await client.get("/v1/nothing")
        wrong = await client.get("/v1/chat/completions")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


async def test_health(router: FakeRouter, engine: FakeEngine) -> None:
    async with proxy(router, engine_transport(engine)) as client:
        resp = await client.get("/health")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def test_metrics_exposition(router: FakeRouter, engine: FakeEngine) -> None:
    metrics = ChimeraMetrics()
    metrics.set_instance_state("llama", "llama@gpu0", (0,), "awake")
    async with proxy(router, engine_transport(engine), metrics) as client:
        await client.post("/v1/chat/completions", json={"model": "llama-1b", "messages": []})
        await client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
        resp = await client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    got = samples(resp.text)
    route = ("route", "/v1/chat/completions")
    ok = frozenset({("model", "llama"), route, ("status", "200")})
    assert got[("chimera_requests_total", ok)] == 1
    missing = frozenset({("model", "unknown"), route, ("status", "404")})
    assert got[("chimera_requests_total", missing)] == 1
    llama = frozenset({("model", "llama")})
    assert got[("chimera_request_e2e_seconds_count", llama)] == 1
    assert ("chimera_request_ttft_seconds_count", llama) not in got  # not streamed
    assert got[("chimera_requests_in_flight", llama)] == 0
    awake = frozenset({("model", "llama"), ("server", "llama@gpu0"), ("gpu", "0"), ("state", "awake")})
    assert got[("chimera_instance_state", awake)] == 1


async def test_official_openai_client(router: FakeRouter, engine: FakeEngine) -> None:
    app = create_app(router, ChimeraMetrics(), transport=engine_transport(engine))
    async with app.router.lifespan_context(app):
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
        client = openai.AsyncOpenAI(base_url="http://proxy/v1", api_key="x", http_client=http, max_retries=0)
        async with client:
            chat = await client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}])
            assert chat.choices[0].message.content == "hello"

            stream = await client.chat.completions.create(
                model="llama-1b", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            pieces = [c.choices[0].delta.content async for c in stream]
            assert pieces == ["Hel", "lo"]

            completion = await client.completions.create(model="qwen", prompt="hello")
            assert completion.choices[0].text == " world"

            with pytest.raises(openai.NotFoundError) as info:
                await client.completions.create(model="nope", prompt="x")
            assert "llama" in str(info.value)
    assert [p for p, _ in engine.seen] == ["/v1/chat/completions"] * 2 + ["/v1/completions"]
    assert len(router.acquired) == 3 and router.balanced
