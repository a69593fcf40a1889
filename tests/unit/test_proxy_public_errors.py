"""What clients are told when an engine fails: each failure type (a failed start, a crash
before and during an answer, a timeout, an unreachable engine) through the proxy, with the
real upstream client against real sockets, and the body checked for local paths, addresses,
ports and command lines (operators find those in the logs)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from orchestrator.errors import EngineStartError, EngineUnavailable
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.proxy.errors import public
from orchestrator.proxy.upstream import Limits
from orchestrator.types import InstanceState
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy import LLAMA, QWEN, error_of
from tests.unit.test_proxy_upstream import SSE, TinyEngine, chunk, hang

LOG = "/work/runs/20250101-000000/llama@gpu0.log"
ARGV = "python -m sglang.launch_server --model-path /models/llama --port 30001 --host 127.0.0.1"
# what the supervisor's failed start says (supervisor/process.py), as the control loop quotes it
FAILED_START = str(
    EngineStartError(f"llama@gpu0: engine exited with code 1 while starting; last lines:\n{ARGV}\nOOM", LOG)
)

LEAKS = re.compile(r"/work|/models|\.log|127\.0\.0\.1|localhost|:\d{2,5}\b|\b\d{4,5}\b|--[a-z]|python|last lines")


def assert_clean(text: str) -> None:
    found = LEAKS.findall(text)
    assert not found, f"client-facing text leaks {found}: {text}"


@asynccontextmanager
async def client_for(router: FakeRouter) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(router, ChimeraMetrics(), upstream_limits=Limits(connect_s=1, first_byte_s=0.2, idle_s=0.2))
    async with app.router.lifespan_context(app):
        t = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=t, base_url="http://proxy") as client:
            yield client


async def post(router: FakeRouter, stream: bool = False) -> httpx.Response:
    async with client_for(router) as client:
        return await client.post("/v1/completions", json={"model": "llama", "prompt": "x", "stream": stream})


async def test_a_failed_start_tells_the_reason_without_log_tail_path_or_argv() -> None:
    router = FakeRouter((LLAMA, QWEN))
    router.unavailable = EngineUnavailable(f"every instance of model 'llama' has failed (llama@gpu0: {FAILED_START})")
    resp = await post(router)
    assert resp.status_code == 503
    message = error_of(resp)["message"]
    assert "engine exited with code 1 while starting" in message
    assert_clean(resp.text)


async def test_a_failed_models_error_in_the_model_list_is_clean() -> None:
    router = FakeRouter((LLAMA, QWEN))
    router.states["llama"] = InstanceState.FAILED
    router.errors["llama"] = FAILED_START + "; gave up after 5 failures within 300 s"
    async with client_for(router) as client:
        card = (await client.get("/v1/models/llama")).json()
    assert "exited with code 1" in card["error"]
    assert_clean(card["error"])


async def test_an_engine_that_crashes_before_answering_is_502_without_its_address() -> None:
    async def crash(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.transport.abort()
        return False

    async with TinyEngine(crash) as engine:
        resp = await post(FakeRouter((LLAMA, QWEN), base_url=engine.url))
    assert resp.status_code == 502 and error_of(resp)["code"] == "engine_unreachable"
    assert_clean(resp.text)


async def test_an_engine_that_crashes_mid_stream_ends_the_stream_cleanly() -> None:
    async def crash_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(SSE + chunk(b'data: {"choices": []}\n\n'))
        await writer.drain()
        writer.transport.abort()
        return False

    async with TinyEngine(crash_mid_stream) as engine:
        resp = await post(FakeRouter((LLAMA, QWEN), base_url=engine.url), stream=True)
    assert resp.status_code == 200 and '"error"' in resp.text and resp.text.rstrip().endswith("data: [DONE]")
    assert_clean(resp.text)


async def test_an_engine_that_never_answers_is_504_without_its_address() -> None:
    async with TinyEngine(hang) as engine:
        resp = await post(FakeRouter((LLAMA, QWEN), base_url=engine.url))
    assert resp.status_code == 504 and error_of(resp)["code"] == "engine_timeout"
    assert_clean(resp.text)


async def test_an_engine_port_nobody_listens_on_is_502_without_the_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    resp = await post(FakeRouter((LLAMA, QWEN), base_url=f"http://127.0.0.1:{port}"))
    assert resp.status_code == 502
    assert str(port) not in resp.text
    assert_clean(resp.text)


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("model 'llama' is not ready after waiting 300 s (state: starting)", None),
        ("llama@gpu0: not ready after 600 s (GET /model_info never answered 200) (log: runs/x/llama@gpu0.log)", None),
        ("connect to 127.0.0.1:30001 timed out after 10 s", "connect to <address> timed out after 10 s"),
        ("a probe at /home/me/chimera/x.py failed", "a probe at <path> failed"),
    ],
)
def test_public_keeps_the_reason_and_drops_the_rest(raw: str, kept: str | None) -> None:
    out = public(raw)
    assert_clean(out)
    if kept is not None:
        assert out == kept
    assert "/model_info" in public("GET /model_info never answered")  # a route is not a path
