"""The simulated SGLang server over HTTP: routes, JSON and SSE shapes, park/wake (its launch
spec and command line: test_sim_process.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from orchestrator.shapes import shape_dir
from simsglang.batcher import VirtualClock
from simsglang.server import SimServer, SimSettings, create_app

Client = tuple[Starlette, httpx.AsyncClient, VirtualClock]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "tell me a story"}]}
# /v1/loads per-rank keys of SGLang 0.5.17 (managers/load_snapshot.py LoadSnapshot.to_dict)
LOAD_KEYS = [
    "timestamp",
    "dp_rank",
    "num_running_reqs",
    "num_waiting_reqs",
    "num_waiting_uncached_tokens",
    "num_used_tokens",
    "num_total_tokens",
    "num_active_tokens",
    "max_total_num_tokens",
    "max_running_requests",
    "token_usage",
    "gen_throughput",
    "cache_hit_rate",
    "utilization",
    "total_prefill_uncached_tokens",
    "total_prefill_busy_us",
    "decode_moments",
    "memory",
    "disaggregation",
    "queues",
]


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    clock = VirtualClock(auto=getattr(request, "param", True))
    app = create_app(SimSettings.from_shape("tiny-llama", served_name="tiny"), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            yield app, client, clock


def server(app: Starlette) -> SimServer:
    s = app.state.sim
    assert isinstance(s, SimServer)
    return s


def frames(body: bytes) -> list[Any]:
    """Parse an SSE body, checking its framing: ``data: <json>\\n\\n``... ``data: [DONE]\\n\\n``."""
    text = body.decode()
    assert text.endswith("data: [DONE]\n\n")
    parts = text.split("\n\n")
    assert parts[-1] == "" and parts[-2] == "data: [DONE]"
    assert all(p.startswith("data: ") and "\n" not in p for p in parts[:-1])
    return [json.loads(p[len("data: ") :]) for p in parts[:-2]]


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_routes_are_plain_starlette_routes(sim: Client) -> None:
    app = sim[0]
    paths = {r.path for r in app.routes if isinstance(r, Route)}
    assert len(paths) == len(app.routes)
    assert {
        "/generate",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/loads",
        "/metrics",
        "/health",
        "/health_generate",
        "/server_info",
        "/get_server_info",
        "/model_info",
        "/get_model_info",
        "/pause_generation",
        "/continue_generation",
        "/release_memory_occupation",
        "/resume_memory_occupation",
        "/flush_cache",
    } <= paths


async def test_generate_non_streaming(sim: Client) -> None:
    _, client, _ = sim
    body = {"text": "hello world", "sampling_params": {"max_new_tokens": 7, "ignore_eos": True}}
    r = await client.post("/generate", json=body)
    assert r.status_code == 200
    out = r.json()
    assert set(out) == {"text", "output_ids", "meta_info"} and len(out["output_ids"]) == 7
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 7}
    assert meta["completion_tokens"] == 7 and meta["prompt_tokens"] == 3  # BOS + 2 words
    assert meta["cached_tokens"] == 0 and meta["e2e_latency"] > 0
    assert {"id", "weight_version", "num_retractions", "reasoning_tokens"} <= set(meta)
    again = (await client.post("/generate", json=body)).json()
    assert again["text"] == out["text"] and again["meta_info"]["id"] != meta["id"]


async def test_generate_stream_has_cumulative_text_and_sse_framing(sim: Client) -> None:
    _, client, _ = sim
    r = await client.post(
        "/generate", json={"input_ids": [5, 6, 7], "stream": True, "sampling_params": {"max_new_tokens": 5}}
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = frames(r.content)
    assert len(chunks) == 5
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(texts, texts[1:], strict=False))
    assert [c["meta_info"]["finish_reason"] for c in chunks[:-1]] == [None] * 4
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


async def test_generate_natural_stop_reports_the_eos_token(sim: Client) -> None:
    _, client, _ = sim
    out = (await client.post("/generate", json={"text": "hi"})).json()  # max_new_tokens 128
    fr = out["meta_info"]["finish_reason"]
    assert fr in ({"type": "stop", "matched": 2}, {"type": "length", "length": 128})
    assert out["meta_info"]["completion_tokens"] <= 128


async def test_chat_non_streaming_shape_and_usage(sim: Client) -> None:
    _, client, _ = sim
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 6, "ignore_eos": True})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion" and body["model"] == "m"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length" and choice["matched_stop"] is None
    usage = body["usage"]
    assert usage["completion_tokens"] == 6 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    assert body["metadata"] == {"weight_version": "default"}


async def test_chat_stream_chunks_match_sglang(sim: Client) -> None:
    _, client, _ = sim
    req = {
        **CHAT,
        "max_completion_tokens": 4,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = frames((await client.post("/v1/chat/completions", json=req)).content)
    assert chunks[0]["choices"][0]["delta"] == {"reasoning_content": None, "role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:5]]
    assert len(content) == 4 and all(content)
    finish = chunks[5]["choices"][0]
    assert finish["finish_reason"] == "length" and finish["delta"] == {"reasoning_content": None}
    assert chunks[6]["choices"] == [] and chunks[6]["usage"]["completion_tokens"] == 4
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert all("usage" not in c for c in chunks[:6])
    plain = (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4, "ignore_eos": True})).json()
    assert plain["choices"][0]["message"]["content"] == "".join(content)  # same prompt, same text


async def test_completions_stream_and_non_stream(sim: Client) -> None:
    _, client, _ = sim
    body = (await client.post("/v1/completions", json={"model": "m", "prompt": "once"})).json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] <= 16
    req = {
        "model": "m",
        "prompt": "once",
        "max_tokens": 3,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = frames((await client.post("/v1/completions", json=req)).content)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, "length"]
    assert all(c["usage"] is None for c in chunks[:3])
    assert chunks[3]["choices"] == [] and chunks[3]["usage"] == {
        "prompt_tokens": 2,
        "total_tokens": 5,
        "completion_tokens": 3,
        "reasoning_tokens": 0,
    }


async def test_errors_use_sglangs_shapes_without_tracebacks(sim: Client) -> None:
    _, client, _ = sim
    bad = await client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "Traceback" not in bad.text
    assert set(bad.json()) == {"object", "message", "type", "param", "code"}
    lora = await client.post("/v1/chat/completions", json={**CHAT, "model": "base:adapter"})
    assert lora.status_code == 400 and "LoRA adapter 'adapter'" in lora.json()["message"]
    empty = await client.post("/v1/chat/completions", json={**CHAT, "messages": []})
    assert empty.json()["message"] == "Messages cannot be empty."
    too_long = await client.post("/generate", json={"input_ids": list(range(3000))})
    assert too_long.status_code == 400 and "context length" in too_long.json()["error"]["message"]
    gen_bad = await client.post("/generate", content=b"[")
    assert gen_bad.status_code == 400 and gen_bad.json()["object"] == "error"
    assert (await client.get("/nope")).json() == {"detail": "Not Found"}
    # like SGLang, any other model name is served and echoed (the proxy rewrites it anyway)
    other = await client.post("/v1/chat/completions", json={**CHAT, "model": "who", "max_tokens": 1})
    assert other.status_code == 200 and other.json()["model"] == "who"


async def test_loads_have_sglangs_shape(sim: Client) -> None:
    _, client, _ = sim
    await client.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 3}})
    body = (await client.get("/v1/loads")).json()
    assert set(body) == {"timestamp", "version", "accelerator", "num_accelerators", "loads"}
    assert body["version"] == "0.5.17" and body["num_accelerators"] == 1
    (load,) = body["loads"]
    assert list(load) == LOAD_KEYS
    assert load["memory"]["token_capacity"] == load["max_total_num_tokens"] > 0
    assert set(load["queues"]) == {"waiting", "grammar", "paused", "retracted", "prealloc_ready"}
    assert load["total_prefill_uncached_tokens"] == 2
    core = (await client.get("/v1/loads", params={"include": "core"})).json()["loads"][0]
    assert "memory" not in core and "num_running_reqs" in core
    assert (await client.get("/v1/loads", params={"include": "bogus"})).status_code == 400
    prom = (await client.get("/v1/loads", params={"format": "prometheus"})).text
    assert 'sglang_num_running_reqs{dp_rank="0"} 0' in prom


async def test_metrics_parse_with_sglang_names_and_labels(sim: Client) -> None:
    _, client, _ = sim
    await client.post(
        "/generate",
        json={"text": "a b c", "stream": True, "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}},
    )
    text = (await client.get("/metrics")).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "sglang:gen_throughput",
        "sglang:prompt_tokens",
        "sglang:generation_tokens",
        "sglang:time_to_first_token_seconds",
        "sglang:e2e_request_latency_seconds",
        "sglang:inter_token_latency_seconds",
        "sglang:num_requests",
    ):
        assert name in fams, name
    gen = [s for s in fams["sglang:generation_tokens"].samples if s.name.endswith("_total")]
    assert gen[0].value == 4 and gen[0].labels == {
        "model_name": "tiny",
        "engine_type": "unified",
        "is_streaming": "true",
    }
    running = fams["sglang:num_running_reqs"].samples[0]
    assert running.labels == {
        "model_name": "tiny",
        "engine_type": "unified",
        "tp_rank": "0",
        "pp_rank": "0",
        "moe_ep_rank": "0",
    }
    itl = [s for s in fams["sglang:inter_token_latency_seconds"].samples if s.name.endswith("_count")]
    assert itl[0].value == 3
    queued = [s for s in fams["sglang:queue_time_seconds"].samples if s.name.endswith("_count")]
    assert queued[0].value == 1
    assert not [s for f in fams.values() for s in f.samples if s.name.endswith("_created")]


async def test_requests_sent_while_paused_wait_for_continue(sim: Client) -> None:
    app, client, _ = sim
    r = await client.post("/pause_generation", json={"mode": "retract"})
    assert r.json() == {"message": "Generation paused successfully.", "status": "ok"}
    assert (await client.get("/health")).status_code == 503
    task = asyncio.create_task(client.post("/generate", json={"text": "later"}))
    await settle()
    assert not task.done() and server(app).batcher.is_idle()  # held before the scheduler
    assert (await client.post("/continue_generation")).json()["status"] == "ok"
    assert (await asyncio.wait_for(task, 5)).status_code == 200
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("sim", [False], indirect=True)  # manual clock: steps wait for advance()
async def test_release_is_refused_while_busy_and_drops_the_ledger_when_idle(sim: Client) -> None:
    app, client, clock = sim
    task = asyncio.create_task(client.post("/generate", json={"text": "busy"}))
    await settle()
    assert server(app).batcher.running  # its prefill is in flight
    r = await client.post("/release_memory_occupation", json={"tags": ["weights"]})
    assert r.status_code == 400 and "idle" in r.json()["error"]["message"]
    clock.auto = True
    clock.advance(1.0)
    assert (await asyncio.wait_for(task, 5)).status_code == 200
    before = (await client.get("/server_info")).json()
    assert before["simulated"] is True and before["sim"]["memory"]["weights_bytes"] > 0
    r = await client.post("/release_memory_occupation", json={})
    assert r.status_code == 200 and r.json() is None
    mem = (await client.get("/server_info")).json()["sim"]["memory"]
    assert mem["weights_bytes"] == mem["kv_cache_bytes"] == mem["cuda_graph_bytes"] == 0
    assert mem["resident_bytes"] == mem["context_bytes"]
    assert (await client.get("/health")).status_code == 503
    assert (await client.get("/model_info")).status_code == 200  # how to probe a parked server
    assert (await client.post("/resume_memory_occupation", json={})).status_code == 200
    assert (await client.get("/health")).status_code == 200


async def test_output_is_identical_after_park_and_wake(sim: Client) -> None:
    _, client, _ = sim
    body = {"text": "same words", "sampling_params": {"max_new_tokens": 12, "ignore_eos": True}}
    before = (await client.post("/generate", json=body)).json()["text"]
    await client.post("/pause_generation", json={"mode": "retract"})
    await client.post("/release_memory_occupation", json={"tags": ["weights", "cuda_graph"]})
    await client.post("/resume_memory_occupation", json={"tags": ["weights", "cuda_graph"]})
    await client.post("/continue_generation", json={})
    assert (await client.post("/generate", json=body)).json()["text"] == before


async def test_update_weights_from_disk_retargets_an_awake_server(sim: Client, tmp_path: Path) -> None:
    _, client, _ = sim
    finetune = tmp_path / "tiny-finetune"
    finetune.mkdir()
    shutil.copy(shape_dir("tiny-llama") / "config.json", finetune / "config.json")
    body = {"text": "same words", "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}}
    base = (await client.post("/generate", json=body)).json()["text"]
    r = await client.post("/update_weights_from_disk", json={"model_path": str(finetune), "weight_version": "ft-1"})
    assert r.json() == {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}
    out = (await client.post("/generate", json=body)).json()
    assert out["text"] != base and out["meta_info"]["weight_version"] == "ft-1"
    assert (await client.get("/model_info")).json()["model_path"] == str(finetune)
    wrong = await client.post("/update_weights_from_disk", json={"model_path": "llama-3.2-1b"})
    assert wrong.status_code == 400 and wrong.json()["success"] is False
    await client.post("/release_memory_occupation", json={"tags": ["weights"]})
    parked = await client.post("/update_weights_from_disk", json={"model_path": "tiny-llama"})
    assert parked.status_code == 400 and "parked" in parked.json()["message"]
    await client.post("/resume_memory_occupation", json={"tags": ["weights"]})
    assert (await client.post("/update_weights_from_disk", json={"model_path": "tiny-llama"})).status_code == 200
    assert (await client.post("/generate", json=body)).json()["text"] == base


async def test_info_routes(sim: Client) -> None:
    _, client, _ = sim
    info = (await client.get("/model_info")).json()
    assert info["model_path"] == "tiny-llama" and info["is_generation"] is True
    assert info["architectures"] == ["LlamaForCausalLM"] and info["model_type"] == "llama"
    assert (await client.get("/get_model_info")).json() == info
    server_info = (await client.get("/get_server_info")).json()
    assert server_info["version"] == "0.5.17" and server_info["served_model_name"] == "tiny"
    assert server_info["internal_states"][0]["memory_usage"]["token_capacity"] > 0
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    assert models["data"][0]["owned_by"] == "sglang"
    assert (await client.get("/v1/models/other")).status_code == 404
    assert (await client.post("/flush_cache")).status_code == 200


async def test_client_disconnect_mid_stream_aborts_and_frees_kv(sim: Client) -> None:
    app, _, _ = sim
    body = json.dumps(
        {"text": "go", "stream": True, "sampling_params": {"max_new_tokens": 1500, "ignore_eos": True}}
    ).encode()
    got_chunk, requested = asyncio.Event(), False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await got_chunk.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            got_chunk.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/generate",
        "raw_path": b"/generate",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "server": ("sim", 80),
        "client": ("test", 1),
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    b = server(app).batcher
    assert b.is_idle() and b.snapshot().used_tokens == 0
    metrics = server(app).metrics.render().decode()
    aborted = 'sglang:num_aborted_requests_total{engine_type="unified",model_name="tiny"} 1.0'
    assert aborted in metrics


@pytest.mark.parametrize("sim", [False], indirect=True)  # manual clock: the request stays running
@pytest.mark.parametrize("path", ["/generate", "/v1/chat/completions"])
async def test_client_disconnect_non_streaming_aborts_and_frees_kv(sim: Client, path: str) -> None:
    """SGLang's _wait_one_response: a non-streaming request whose client leaves is aborted at
    the next disconnect check, not generated to the end."""
    app, _, _ = sim
    s = server(app)
    s.disconnect_poll_s = 0.01
    if path == "/generate":
        payload: dict[str, Any] = {"text": "go", "sampling_params": {"max_new_tokens": 1500, "ignore_eos": True}}
    else:
        payload = {**CHAT, "max_tokens": 1500, "ignore_eos": True}
    body = json.dumps(payload).encode()
    gone, requested, sent = asyncio.Event(), False, list[MutableMapping[str, Any]]()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        if gone.is_set():  # answers at once, inside is_disconnected()'s cancelled scope
            return {"type": "http.disconnect"}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "server": ("sim", 80),
        "client": ("test", 1),
        "state": {},
    }
    task = asyncio.create_task(app(scope, receive, send))
    b = s.batcher
    # admitted, its prefill waiting on the manual clock (the batcher offers no event for it)
    while b.snapshot().num_running == 0:  # noqa: ASYNC110
        await asyncio.sleep(0)
    assert b.snapshot().used_tokens > 0
    gone.set()
    await asyncio.wait_for(task, 5)
    assert b.snapshot().num_running == 0 and b.is_idle() and b.snapshot().used_tokens == 0
    assert sent[0]["status"] == 499
    metrics = s.metrics.render().decode()
    assert 'sglang:num_aborted_requests_total{engine_type="unified",model_name="tiny"} 1.0' in metrics


async def test_an_injected_resume_failure_answers_500_once(sim: Client) -> None:
    """bench/chaos makes a wake fail through /sim/fail_next_resume (as a CUDA OOM would)."""
    _, client, _ = sim
    assert (await client.post("/release_memory_occupation", json={})).status_code == 200
    assert (await client.post("/sim/fail_next_resume", json={"count": "x"})).status_code == 400
    assert (await client.post("/sim/fail_next_resume", json={})).json() == {"fail_resumes": 1}
    r = await client.post("/resume_memory_occupation", json={})
    assert r.status_code == 500 and "out of memory" in r.json()["error"]["message"]
    assert (await client.post("/resume_memory_occupation", json={})).status_code == 200


async def test_context_checks_match_sglangs_tokenizer_manager(sim: Client) -> None:
    """SGLang 0.5.17's ``_validate_one_request``: input >= context, or input + max_new_tokens >
    context (equal passes: the scheduler clips), is a 400 with its message; the proxy's up-front
    check (orchestrator/proxy/context.py) relies on these bounds."""
    _, client, _ = sim
    ctx = server(sim[0]).context_len
    fits = await client.post("/generate", json={"input_ids": [1] * 10, "sampling_params": {"max_new_tokens": ctx - 10}})
    assert fits.status_code == 200, fits.text
    over = await client.post("/generate", json={"input_ids": [1] * 10, "sampling_params": {"max_new_tokens": ctx - 9}})
    assert over.status_code == 400
    assert over.json()["error"]["message"].startswith(
        f"Requested token count exceeds the model's maximum context length of {ctx} tokens. "
        f"You requested a total of {ctx + 1} tokens: 10 tokens from the input messages"
    )
    whole = await client.post("/generate", json={"input_ids": [1] * ctx})
    assert whole.status_code == 400
    assert whole.json()["error"]["message"] == (
        f"The input ({ctx} tokens) is longer than the model's context length ({ctx} tokens)."
    )
