"""LoRA adapters on the sim engine, against SGLang 0.5.17's bodies, answers and errors
(simsglang/lora.py quotes the source), on a virtual clock."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orchestrator.shapes import load_shape
from simsglang.__main__ import main
from simsglang.batcher import Batcher, SimRequest, VirtualClock
from simsglang.lora import LoraSettings, adapter_bytes, check_settings
from simsglang.server import SimServer, SimSettings, create_app
from simsglang.tokenizer import OutputPlan
from tests.unit.test_sim_batcher import drain, running, settle, small_plan

LORA = LoraSettings(enabled=True, max_loras_per_batch=2, max_lora_rank=16, target_modules=("all",))


async def client_for(lora: LoraSettings) -> AsyncIterator[tuple[httpx.AsyncClient, SimServer, VirtualClock]]:
    clock = VirtualClock()
    app = create_app(SimSettings.from_shape("tiny-llama", served_name="base", lora=lora), clock=clock)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
            yield client, app.state.sim, clock


@pytest.fixture
async def sim() -> AsyncIterator[tuple[httpx.AsyncClient, SimServer, VirtualClock]]:
    async for c in client_for(LORA):
        yield c


@pytest.fixture
async def no_lora() -> AsyncIterator[tuple[httpx.AsyncClient, SimServer, VirtualClock]]:
    async for c in client_for(LoraSettings()):
        yield c


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def test_load_unload_answer_lora_update_output(sim: Any) -> None:
    client, server, clock = sim
    t0 = clock.now()
    r = await client.post("/load_lora_adapter", json={"lora_name": "a", "lora_path": "/ad/a"})
    assert r.status_code == 200
    assert r.json() == {"success": True, "error_message": "", "loaded_adapters": {"a": "/ad/a"}}
    assert clock.now() - t0 == pytest.approx(server.lora.load_seconds())  # the modelled load time
    again = await client.post("/load_lora_adapter", json={"lora_name": "a", "lora_path": "/ad/a"})
    assert again.status_code == 400
    assert again.json()["error_message"] == "Failed to load LoRA adapter a because it is already loaded"
    gone = await client.post("/unload_lora_adapter", json={"lora_name": "zz"})
    assert gone.status_code == 400 and gone.json()["error_message"].startswith("LoRA with name zz does not exist")
    ok = await client.post("/unload_lora_adapter", json={"lora_name": "a"})
    assert ok.json() == {"success": True, "error_message": "", "loaded_adapters": {}}
    missing = await client.post("/load_lora_adapter", json={"lora_name": "b"})
    assert missing.status_code == 400 and missing.json()["message"] == "lora_path: Field required"


async def test_without_enable_lora_everything_is_refused(no_lora: Any) -> None:
    client, _, _ = no_lora
    r = await client.post("/load_lora_adapter", json={"lora_name": "a", "lora_path": "/ad/a"})
    assert r.status_code == 400
    assert r.json()["error_message"] == "LoRA is not enabled. Please set `--enable-lora` to enable LoRA."
    chat_r = await client.post("/v1/chat/completions", json=chat("base:a"))
    assert chat_r.status_code == 400 and "LoRA is not enabled" in chat_r.json()["message"]


async def test_adapter_output_differs_from_base_and_other_adapters(sim: Any) -> None:
    client, _, _ = sim
    for name in ("a", "b"):
        await client.post("/load_lora_adapter", json={"lora_name": name, "lora_path": f"/ad/{name}"})
    texts = {}
    for model in ("base", "base:a", "base:b"):
        r = await client.post("/v1/chat/completions", json=chat(model))
        assert r.status_code == 200, r.text
        texts[model] = r.json()["choices"][0]["message"]["content"]
    assert len(set(texts.values())) == 3
    gen = await client.post(
        "/generate", json={"text": "hi", "lora_path": "a", "sampling_params": {"max_new_tokens": 4}}
    )
    assert gen.status_code == 200


async def test_never_loaded_is_refused_and_an_unloaded_one_reloads_implicitly(sim: Any) -> None:
    client, server, _ = sim
    r = await client.post("/v1/chat/completions", json=chat("base:nope"))
    assert r.status_code == 400 and "has never been loaded: nope" in r.json()["message"]
    await client.post("/load_lora_adapter", json={"lora_name": "a", "lora_path": "/ad/a"})
    first = (await client.post("/v1/chat/completions", json=chat("base:a"))).json()
    await client.post("/unload_lora_adapter", json={"lora_name": "a"})
    again = (await client.post("/v1/chat/completions", json=chat("base:a"))).json()
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert server.lora.loads == 2 and "a" in server.lora.loaded()


def test_startup_assertions_follow_sglang() -> None:
    assert check_settings(LoraSettings(enabled=True)) is not None  # rank and modules needed
    assert check_settings(LORA) is None
    assert check_settings(LoraSettings(enabled=True, paths=(("a", "/a"),), max_loaded_loras=1)) is not None
    assert main(["--model-path", "tiny-llama", "--enable-lora"]) == 1
    assert adapter_bytes(load_shape("llama-3.1-8b"), 16) == pytest.approx(84e6, rel=0.05)


def lora_request(rid: str, adapter: str | None) -> SimRequest:
    return SimRequest(rid, 4, OutputPlan(seed=zlib.crc32(rid.encode()), length=2, finish="length"), adapter=adapter)


async def test_batch_holds_at_most_max_loras_per_batch_adapters_and_skips_others() -> None:
    clock = VirtualClock()
    from orchestrator.perf.model import LatencyModel

    batcher = Batcher(LatencyModel(load_shape("llama-3.1-8b")), small_plan(capacity=1000), clock)
    batcher.max_loras_per_batch = 2
    reqs = [lora_request("r1", "a"), lora_request("r2", "b"), lora_request("r3", "c"), lora_request("r4", "a")]
    for r in reqs:
        batcher.submit(r)
    admitted = batcher._admit()
    assert [r.rid for r in admitted] == ["r1", "r2", "r4"]  # c skipped, a later `a` still runs
    batcher.waiting.extendleft(reversed(admitted))
    async for b in running(batcher):
        await settle()
        done = await asyncio.gather(*(drain(r) for r in reqs))
        assert all(ev[-1].finish for ev in done)
        assert b.is_idle()


async def test_update_weights_takes_the_weights_over_the_configured_bandwidth(tmp_path: Any) -> None:
    import shutil

    from orchestrator.shapes import shape_dir

    d = tmp_path / "ft"
    d.mkdir()
    shutil.copy(shape_dir("tiny-llama") / "config.json", d / "config.json")
    for bw in (None, 1e6):
        clock = VirtualClock()
        app = create_app(SimSettings.from_shape("tiny-llama", weights_load_bw=bw), clock=clock)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
                t0 = clock.now()
                r = await client.post("/update_weights_from_disk", json={"model_path": str(d)})
                assert r.status_code == 200 and r.json()["success"]
                sim: SimServer = app.state.sim
                want = sim.plan.weight_bytes / (bw or 2.5e9)
                assert clock.now() - t0 == pytest.approx(want, rel=0.01)
