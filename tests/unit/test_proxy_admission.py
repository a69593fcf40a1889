"""Local admission (proxy/admission.py): the gate alone with a fake clock, then through the proxy
app (forward.py's hook) against a fake router and a MockTransport engine."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx
import pytest

from orchestrator.config import ModelSpec, parse_config
from orchestrator.deployment import derive
from orchestrator.metrics import ChimeraMetrics
from orchestrator.perf.model import LatencyModel
from orchestrator.proxy import create_app
from orchestrator.proxy.admission import (
    STALE_S,
    AdmissionGate,
    estimate_prompt_tokens,
    max_new_tokens,
)
from orchestrator.proxy.errors import ProxyError
from orchestrator.types import Endpoint, InstanceView, LoadSample, ModelView
from tests.unit.control_fakes import Clock, settle

CFG = parse_config(
    {
        "mode": "full",
        "host": {"gpus": 2},
        "models": [
            {"name": "fast", "model_path": "llama-3.2-1b", "slo": {"ttft_s": 1.0}, "placements": [{"gpus": [0]}]},
            {"name": "big", "model_path": "llama-3.1-8b", "slo": {"ttft_s": 5.0}, "placements": [{"gpus": [0]}]},
            {"name": "free", "model_path": "llama-3.1-8b", "placements": [{"gpus": [1]}]},  # no SLO
            {"name": "strict", "model_path": "tiny-llama", "slo": {"ttft_s": 0.0}, "placements": [{"gpus": [1]}]},
        ],
    }
)
BODY = {"prompt": "x" * 400, "max_tokens": 100}  # ~100 prompt tokens + 100 new


def spec(name: str) -> ModelSpec:
    m = CFG.model(name)
    assert m is not None
    return m


def loads(
    iid: str,
    at: float,
    *,
    used: int = 0,
    waiting_tokens: int = 0,
    running: int = 0,
    max_running: int = 64,
    capacity: int = 10_000,
) -> LoadSample:
    return LoadSample(iid, at, running, 0, waiting_tokens, used, capacity, max_running, 0.0)


def test_estimates_read_openai_and_generate_bodies() -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "a" * 40},
            {"role": "user", "content": [{"type": "text", "text": "b" * 40}]},
        ]
    }
    assert estimate_prompt_tokens(chat) == 20
    assert estimate_prompt_tokens({"prompt": "c" * 8}) == 2
    assert estimate_prompt_tokens({"input_ids": [[1, 2, 3], [4]]}) == 4
    assert estimate_prompt_tokens({}) == 1
    assert max_new_tokens({"max_completion_tokens": 7, "max_tokens": 9}) == 7
    assert max_new_tokens({"sampling_params": {"max_new_tokens": 5}}) == 5
    assert max_new_tokens({}) == 256


async def test_gate__without_a_sample_admits_at_once() -> None:
    gate = AdmissionGate(derive(CFG), clock=Clock(100.0))
    rid = await gate.admit(spec("fast"), BODY, "fast@gpu0", 100.0)
    gate.done("fast@gpu0", rid)
    assert gate.queued() == {}


async def test_gate__waits_for_kv_room_and_counts_what_it_sent_since_the_sample() -> None:
    clock = Clock(100.0)
    gate = AdmissionGate(derive(CFG), clock=clock)
    gate.observe(loads("big@gpu0", 100.0, used=9_900))  # 100 tokens free, a request needs 200
    first = asyncio.create_task(gate.admit(spec("big"), BODY, "big@gpu0", 100.0))
    await settle()
    assert not first.done() and gate.queued() == {0: 1}
    gate.observe(loads("big@gpu0", 100.1, used=9_650))  # 350 free: one request, not two
    second = asyncio.create_task(gate.admit(spec("big"), BODY, "big@gpu0", 100.1))
    await settle()
    assert first.done() and not second.done()
    gate.observe(loads("big@gpu0", 100.2, used=9_400))  # the engine now shows the first one
    await settle()
    assert second.done()
    gate.done("big@gpu0", first.result())
    gate.done("big@gpu0", second.result())


async def test_gate__earliest_deadline_first_when_one_slot_frees() -> None:
    gate = AdmissionGate(derive(CFG), clock=Clock(100.0))
    gate.observe(loads("big@gpu0", 100.0, running=64))  # no free running slot
    late = asyncio.create_task(gate.admit(spec("big"), BODY, "big@gpu0", 99.9))
    early = asyncio.create_task(gate.admit(spec("big"), BODY, "big@gpu0", 99.5))  # held longer
    await settle()
    gate.observe(loads("big@gpu0", 100.0, running=63))
    await settle()
    assert early.done() and not late.done()
    late.cancel()
    await settle()
    assert gate.queued() == {}  # a client that leaves leaves the queue


async def test_gate__sheds_infeasible_requests_with_an_honest_retry_after() -> None:
    gate = AdmissionGate(derive(CFG), clock=Clock(100.0))
    backlog_tokens = 400_000
    gate.observe(loads("fast@gpu0", 100.0, waiting_tokens=backlog_tokens, capacity=1 << 30))
    with pytest.raises(ProxyError) as exc:
        await gate.admit(spec("fast"), BODY, "fast@gpu0", 100.0)
    err = exc.value
    backlog_s = LatencyModel(spec("fast").shape).prefill_time([(backlog_tokens, 0)])
    assert backlog_s > 1.0  # more prefill ahead of it than its 1 s TTFT objective
    assert err.status == 429 and err.code == "deadline_unmeetable"
    assert err.type == "rate_limit_error" and err.headers["Retry-After"] == str(math.ceil(backlog_s))
    # a person reads: which model, its SLO, the expected first token and its parts, when to retry
    assert err.message.startswith("model 'fast' cannot give a first token within its TTFT SLO of 1.00 s now")
    assert f"+ {backlog_s:.2f} s behind other requests on its GPUs +" in err.message
    assert err.message.endswith(
        f"Retry in {math.ceil(backlog_s)} s, when the work ahead of it should be done (Retry-After)."
    )
    assert gate.queued() == {}


async def test_gate__a_model_without_ttft_objective_is_served_late_never_shed() -> None:
    gate = AdmissionGate(derive(CFG), clock=Clock(100.0))
    gate.observe(loads("free@gpu1", 100.0, waiting_tokens=9_000, capacity=9_000))  # no room
    waiter = asyncio.create_task(gate.admit(spec("free"), BODY, "free@gpu1", 10.0))  # long ago
    await settle()
    assert not waiter.done()
    gate.observe(loads("free@gpu1", 100.2, capacity=9_000))
    await settle()
    assert waiter.done() and waiter.exception() is None


# ---- through the proxy (forward.py's hook) ----------------------------------------------


class Router:
    def __init__(self) -> None:
        self.released: list[str] = []
        self.suspects: list[tuple[str, str]] = []

    def resolve(self, name: str) -> ModelSpec | None:
        return CFG.model(name)

    def known_names(self) -> list[str]:
        return CFG.names()

    def models(self) -> list[ModelView]:
        return []

    def instances(self) -> list[InstanceView]:
        return []

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        iid = f"{model.name}@gpu{model.placements[0].gpus[0]}"
        return Endpoint(iid, f"http://{model.name}.engine", model.name)

    def release(self, endpoint: Endpoint) -> None:
        self.released.append(endpoint.instance_id)

    def suspect(self, instance_id: str, detail: str) -> None:
        self.suspects.append((instance_id, detail))


def engine(request: httpx.Request) -> httpx.Response:
    body: dict[str, Any] = {
        "id": "x",
        "object": "text_completion",
        "created": 1,
        "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
    }
    return httpx.Response(200, json=body)


async def test_proxy__sheds_with_429_in_the_envelope_and_serves_the_rest() -> None:
    router = Router()
    app = create_app(router, ChimeraMetrics(), transport=httpx.MockTransport(engine))
    app.state.admission = AdmissionGate(derive(CFG))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://chimera") as client,
    ):
        r = await client.post("/v1/completions", json={"model": "strict", **BODY})
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "deadline_unmeetable" and err["src"] == "chimera"
        r = await client.post("/v1/completions", json={"model": "free", **BODY})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"
    assert router.released == ["strict@gpu1", "free@gpu1"]  # every acquire is released


async def test_gate__a_queued_request_is_admitted_once_samples_stop() -> None:
    """The engine looked full, then no sample came (scrapes failing, instance gone): once the
    last sample is stale, room is unknown and the request goes, with no other event."""
    clock = Clock(100.0)
    gate = AdmissionGate(derive(CFG), clock=clock, repump_s=0.01)
    gate.observe(loads("free@gpu1", 100.0, running=64, max_running=64))
    t = asyncio.create_task(gate.admit(spec("free"), BODY, "free@gpu1", 100.0))
    await settle()
    assert not t.done()
    clock.t += 10 * STALE_S
    await asyncio.wait_for(t, timeout=5)


async def test_gate__held_requests_are_kv_demand_and_their_arrival_pokes_the_ledger() -> None:
    """A request that must wait for KV room is demand the engine cannot show: the gate reports
    its KV per instance (the ledger adds it, kv/demand.py) and asks for a re-split at once."""
    gate = AdmissionGate(derive(CFG), clock=Clock(100.0))
    pokes: list[None] = []
    gate.on_held = lambda: pokes.append(None)
    gate.observe(loads("big@gpu0", 100.0, used=9_900))  # 100 tokens free, a request needs ~200
    waiting = [asyncio.create_task(gate.admit(spec("big"), BODY, "big@gpu0", 100.0)) for _ in range(3)]
    await settle()
    per_request = estimate_prompt_tokens(BODY) + max_new_tokens(BODY)
    assert gate.held_kv_tokens() == {"big@gpu0": 3 * per_request}
    assert len(pokes) == 3
    gate.observe(loads("big@gpu0", 100.1, used=0))  # the ledger grew its KV: all three go
    await settle()
    assert all(t.done() for t in waiting) and gate.held_kv_tokens() == {}
    for t in waiting:
        gate.done("big@gpu0", t.result())
    await gate.admit(spec("big"), BODY, "big@gpu0", 100.2)  # room: dispatched at once, no poke
    assert len(pokes) == 3


async def test_gate__a_request_beyond_the_context_goes_to_the_engine_at_once() -> None:
    """SGLang refuses prompt + max_tokens beyond the context with a 400 at once: the gate must
    not hold such a request for KV room no engine will ever have, nor count it as demand."""
    gate = AdmissionGate(derive(CFG), clock=Clock(100.0))
    pokes: list[None] = []
    gate.on_held = lambda: pokes.append(None)
    gate.observe(loads("big@gpu0", 100.0, used=9_900))  # 100 tokens free
    context = spec("big").shape.max_context
    rid = await asyncio.wait_for(
        gate.admit(spec("big"), {"prompt": "x" * 64, "max_tokens": context}, "big@gpu0", 100.0), timeout=5
    )
    assert gate.queued() == {} and gate.held_kv_tokens() == {} and pokes == []
    gate.done("big@gpu0", rid)
    within = asyncio.create_task(gate.admit(spec("big"), {"prompt": "x" * 64, "max_tokens": 1000}, "big@gpu0", 100.0))
    await settle()
    assert not within.done() and gate.queued() == {0: 1}  # one that fits the context still waits
    within.cancel()
    await settle()
