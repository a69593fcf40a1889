"""Client connections (proxy/connections.py) against a real uvicorn server: slow clients are
cut with 408 within their bound, connections beyond the budget get a 503 at once, and under a
low descriptor limit slow clients never make the proxy unreachable."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.env import Env
from orchestrator.proxy import limits as limits_module
from orchestrator.proxy.connections import (
    MIN_CONNECTIONS,
    RESERVED_FDS,
    accept_burst,
    connection_budget,
)
from orchestrator.proxy.limits import RequestLimits
from tests.unit.test_proxy_limits import uvicorn_server

ROOT = Path(__file__).resolve().parents[2]


async def _echo(request: Request) -> Response:
    body = await request.body()
    await asyncio.sleep(float(request.query_params.get("work", "0")))  # the app working, not the client
    return Response(b"ok:%d" % len(body))


def server(limits: RequestLimits) -> AbstractAsyncContextManager[int]:
    return uvicorn_server(Starlette(routes=[Route("/", _echo, methods=["GET", "POST"])]), limits)


async def trickle(port: int, first: bytes, then: bytes, every_s: float) -> tuple[bytes, float]:
    """Sends ``first``, then ``then`` one byte every ``every_s`` until the server answers or
    closes; returns what it answered and when (seconds after connecting)."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    received = b""

    async def drip() -> None:
        for i in range(len(then)):
            await asyncio.sleep(every_s)
            if writer.is_closing():
                return
            writer.write(then[i : i + 1])
            try:
                await writer.drain()
            except ConnectionError:
                return

    dripping = asyncio.create_task(drip())
    try:
        received = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    except ConnectionResetError:
        pass
    finally:
        dripping.cancel()
        writer.close()
    return received, time.monotonic() - start


def envelope(raw: bytes) -> dict[str, object]:
    error = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
    assert isinstance(error, dict)
    return error


async def test_a_head_sent_a_byte_at_a_time_is_cut_with_408_within_the_bound() -> None:
    async with server(RequestLimits(header_timeout_s=0.5)) as port:
        got, took = await trickle(port, b"GET / HTTP/1.1\r\n", b"x-slow: " + b"a" * 1000, every_s=0.05)
    assert got.startswith(b"HTTP/1.1 408 "), got[:80]
    err = envelope(got)
    assert err["code"] == "request_timeout" and "CHIMERA_HEADER_TIMEOUT_S" in str(err["message"])
    assert 0.45 <= took < 2.0


async def test_a_connection_that_sends_nothing_is_cut_too() -> None:
    async with server(RequestLimits(header_timeout_s=0.3)) as port:
        got, took = await trickle(port, b"", b"", every_s=1)
    assert got.startswith(b"HTTP/1.1 408 ") and took < 2.0


async def test_a_body_sent_a_byte_at_a_time_is_cut_with_408_within_the_bound() -> None:
    head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n"
    async with server(RequestLimits(header_timeout_s=5, body_timeout_s=0.5)) as port:
        got, took = await trickle(port, head, b"b" * 1000, every_s=0.05)
    assert got.startswith(b"HTTP/1.1 408 "), got[:80]
    assert "CHIMERA_BODY_TIMEOUT_S" in str(envelope(got)["message"])
    assert 0.45 <= took < 2.0


async def test_an_answer_that_takes_longer_than_the_bounds_is_not_cut() -> None:
    """The timers bound what the client sends, never the app's work on the answer, and a
    keep-alive connection serves a second request."""
    async with server(RequestLimits(header_timeout_s=0.2, body_timeout_s=0.2)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            first = await client.post("/?work=0.5", content=b"x" * 100)
            second = await client.get("/")
    assert (first.status_code, first.content) == (200, b"ok:100")
    assert second.status_code == 200


async def test_connections_beyond_the_budget_are_answered_503_at_once() -> None:
    async with server(RequestLimits(header_timeout_s=30, max_connections=3)) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        got, took = await trickle(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b"", every_s=1)
        for _, writer in held:
            writer.close()
    assert got.startswith(b"HTTP/1.1 503 "), got[:80]
    assert b"retry-after: 1" in got.lower() and envelope(got)["code"] == "too_many_connections"
    assert took < 2.0


async def test_a_refusal_beyond_the_linger_slots_is_a_503_not_a_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every linger slot taken by a refused client that sends nothing: the next refused client,
    which sends its request, still reads its 503 (the oldest lingering one is closed for it;
    closing the new one at once reset it before it could read)."""
    slots = 4
    monkeypatch.setattr(limits_module, "accept_burst", lambda nofile: slots)
    async with server(RequestLimits(header_timeout_s=30, max_connections=3)) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(slots + 1)]
        async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            statuses = []
            for _ in range(5):
                r = await client.post(f"http://127.0.0.1:{port}/", json={"model": "x", "messages": []})
                statuses.append(r.status_code)
        for _, writer in held + idle:
            writer.close()
    assert statuses == [503] * 5


def test_the_budget_leaves_room_for_engine_connections_and_reserved_descriptors() -> None:
    assert connection_budget(1024) == (1024 - RESERVED_FDS - 2 * 128) // 2 == 320
    assert connection_budget(256) == (256 - RESERVED_FDS - 2 * 32) // 2 == 32
    assert connection_budget(100) == MIN_CONNECTIONS
    # a burst of accepts and the refusals that linger fit beside the budget and its engine sockets
    for nofile in (256, 1024, 4096, 65536, 1 << 20):
        burst = accept_burst(nofile)
        assert 2 * connection_budget(nofile) + 2 * burst + RESERVED_FDS <= nofile
    assert accept_burst(1 << 20) == 2048  # uvicorn's default where descriptors are plenty


def test_the_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    code = (
        "import logging, resource; logging.basicConfig(level=logging.INFO);"
        "from orchestrator.proxy.connections import raise_nofile;"
        "print(raise_nofile(), resource.getrlimit(resource.RLIMIT_NOFILE))"
    )

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))

    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, preexec_fn=low, capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "(256, 512) (512, 512)"
    assert "raised from 256 to 512" in out.stderr


def test_timeouts_and_connections_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env.read()
    assert (env.header_timeout_s, env.body_timeout_s, env.max_connections) == (10.0, 60.0, None)
    monkeypatch.setenv("CHIMERA_HEADER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("CHIMERA_BODY_TIMEOUT_S", "30")
    monkeypatch.setenv("CHIMERA_MAX_CONNECTIONS", "500")
    env = Env.read()
    assert (env.header_timeout_s, env.body_timeout_s, env.max_connections) == (2.5, 30.0, 500)
    monkeypatch.setenv("CHIMERA_HEADER_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="CHIMERA_HEADER_TIMEOUT_S"):
        Env.read()


async def test_slow_clients_under_a_low_descriptor_limit_never_make_the_proxy_unreachable(tmp_path: Path) -> None:
    """300 slow clients against a proxy whose limit is 256 descriptors: a normal request still
    gets an answer (200, or the 503 envelope), never a refused connection or a hang."""
    port_file = tmp_path / "port"

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    env = {**os.environ, "CHIMERA_HEADER_TIMEOUT_S": "60"}  # the slow clients stay for the whole test
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.unit.proxy_server", str(port_file), cwd=ROOT, env=env, preexec_fn=low
    )
    slow: list[asyncio.StreamWriter] = []
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert proc.returncode is None and time.monotonic() < deadline, "the proxy did not start"
            await asyncio.sleep(0.05)  # its startup, not a wall-clock assertion
        port = int(port_file.read_text())
        for _ in range(300):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")  # and never the rest
            slow.append(writer)
        await asyncio.sleep(0.5)  # let the server accept them all before the normal request
        statuses = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(3):
                resp = await client.post("/v1/completions", json={"model": "llama", "prompt": "hi"})
                statuses.append(resp.status_code)
                if resp.status_code == 503:
                    assert resp.json()["error"]["code"] == "too_many_connections"
        assert set(statuses) <= {200, 503}
        assert proc.returncode is None
    finally:
        for writer in slow:
            writer.close()
        proc.kill()
        await proc.wait()
