"""LoRA adapters as models: the config entry, the popularity policy (pure, time passed in), the
residency that loads and unloads through a recording fake engine client, the router in front
of a fake control loop, and /generate's ``lora_path``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.config import parse_config
from orchestrator.errors import ConfigError, EngineUnavailable
from orchestrator.lora.client import AdapterError
from orchestrator.lora.residency import Residency
from orchestrator.lora.router import AdapterRouter
from orchestrator.policy.lora import Decision, Loaded, Popularity, decide
from orchestrator.proxy.body import engine_body, parse_request
from orchestrator.sglang.lora import lora_flags, split_adapter
from orchestrator.types import Endpoint, InstanceState, InstanceView, LoraLimits, ModelView

FILE = {
    "host": {"gpus": 1},
    "models": [
        {"name": "base", "model_path": "tiny-llama", "placements": [{"gpus": [0]}], "lora": {"max_loras_per_batch": 2}},
        {"name": "a", "base": "base", "adapter": "/ad/a", "slo": {"ttft_s": 2}},
        {"name": "b", "base": "base", "adapter": "/ad/b"},
        {"name": "c", "base": "base", "adapter": "/ad/c", "aliases": ["c1"]},
    ],
}


# -- config and flags ---------------------------------------------------------------------------
def test_an_adapter_is_a_model_of_its_base_with_no_server_of_its_own() -> None:
    cfg = parse_config(FILE)
    base, a = cfg.model("base"), cfg.model("a")
    assert base is not None and a is not None
    assert base.lora == LoraLimits(max_loras_per_batch=2, max_loaded=2)
    assert a.is_adapter and a.base == "base" and a.adapter == "/ad/a" and a.placements == ()
    assert a.shape == base.shape and a.slo.ttft_s == 2
    assert [i.id for i in cfg.instances] == ["base@gpu0"]
    assert cfg.model("c1") is cfg.model("c")
    assert lora_flags(LoraLimits(max_loras_per_batch=2, max_loaded=4)) == [
        "--enable-lora",
        "--max-loras-per-batch",
        "2",
        "--max-loaded-loras",
        "4",
        "--max-lora-rank",
        "16",
        "--lora-target-modules",
        "all",
    ]


def test_a_base_named_by_adapters_gets_default_limits() -> None:
    cfg = parse_config({**FILE, "models": [{**FILE["models"][0], "lora": None}, FILE["models"][1]]})
    assert cfg.model("base") is not None and cfg.model("base").lora == LoraLimits()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"name": "x", "base": "nope", "adapter": "/x"}, "models[1].base: 'nope' is not the name"),
        ({"name": "x", "base": "base"}, "models[1].adapter: needs"),
        ({"name": "x", "base": "base", "adapter": "/x", "placements": []}, "models[1].placements: unknown field"),
        ({"name": "base", "base": "base", "adapter": "/x"}, "'base' is already used"),
    ],
)
def test_bad_adapter_entries_name_their_field(entry: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"models": [FILE["models"][0], entry]})
    assert problem in str(exc.value)


# -- policy ---------------------------------------------------------------------------------------
def loaded(in_flight: int, score: float, at: float = 0.0, loaded_at: float = 0.0) -> Loaded:
    return Loaded(in_flight, Popularity(score, at), loaded_at)


def test_policy_loads_when_there_is_room_and_never_twice() -> None:
    assert decide({}, "a", 2, now=0) == Decision("load")
    assert decide({"a": loaded(0, 1)}, "a", 2, now=0) == Decision("ready")
    assert decide({"a": loaded(0, 1)}, "b", 2, now=0) == Decision("load")


def test_policy_evicts_the_least_popular_idle_adapter() -> None:
    full = {"hot": loaded(0, 10), "cold": loaded(0, 1), "busy": loaded(3, 0)}
    assert decide(full, "new", 3, now=0) == Decision("load", ("cold",))
    # popularity decays: "hot" counted long ago is colder now than "cold" counted just now
    aged = {"hot": loaded(0, 10, at=0), "cold": loaded(0, 1, at=600), "busy": loaded(3, 0)}
    assert decide(aged, "new", 3, now=600) == Decision("load", ("hot",))


def test_policy_waits_when_every_loaded_adapter_is_busy() -> None:
    assert decide({"a": loaded(1, 0), "b": loaded(2, 0)}, "c", 2, now=0) == Decision("wait")


def test_popularity_bump_decays_with_the_half_life() -> None:
    p = Popularity().bump(0.0).bump(0.0)
    assert p.now(0.0) == 2.0 and p.now(60.0) == pytest.approx(1.0) and p.bump(60.0).score == pytest.approx(2.0)


# -- residency ------------------------------------------------------------------------------------
class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.refuse: set[str] = set()

    async def load(self, base_url: str, name: str, path: str) -> None:
        if name in self.refuse:
            raise AdapterError(f"refused {name}")
        self.calls.append(("load", base_url, name))

    async def unload(self, base_url: str, name: str) -> None:
        self.calls.append(("unload", base_url, name))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_residency_loads_on_first_use_and_evicts_the_least_popular() -> None:
    client, clock = FakeClient(), Clock()
    r = Residency(client, clock)
    for name in ("a", "a", "b"):
        await r.acquire("i", "http://e", 2, name, f"/ad/{name}")
        r.release("i", name)
    assert client.calls == [("load", "http://e", "a"), ("load", "http://e", "b")]
    await r.acquire("i", "http://e", 2, "c", "/ad/c")  # b (one request) goes, a (two) stays
    assert client.calls[-2:] == [("unload", "http://e", "b"), ("load", "http://e", "c")]
    assert r.loaded("i") == ["a", "c"]


async def test_residency_waits_while_every_adapter_is_busy() -> None:
    client = FakeClient()
    r = Residency(client, Clock())
    await r.acquire("i", "http://e", 1, "a", "/ad/a")
    waiter = asyncio.create_task(r.acquire("i", "http://e", 1, "b", "/ad/b"))
    await asyncio.sleep(0.01)
    assert not waiter.done() and r.loaded("i") == ["a"]
    r.release("i", "a")
    await asyncio.wait_for(waiter, 1)
    assert r.loaded("i") == ["b"]


async def test_residency_forgets_a_server_that_went_away() -> None:
    client = FakeClient()
    r = Residency(client, Clock())
    await r.acquire("i", "http://e", 2, "a", "/ad/a")
    r.release("i", "a")
    r.observe(InstanceView("i", "base", (0,), InstanceState.PARKED, "http://e"))  # parked: kept
    assert r.loaded("i") == ["a"]
    r.observe(InstanceView("i", "base", (0,), InstanceState.BACKOFF, None))
    assert r.loaded("i") == []
    await r.acquire("i", "http://e2", 2, "a", "/ad/a")  # loaded again on the new process
    assert client.calls[-1] == ("load", "http://e2", "a")


# -- router ---------------------------------------------------------------------------------------
class FakeLoop:
    def __init__(self) -> None:
        self.cfg = parse_config(FILE)
        self.acquired: list[str] = []
        self.released: list[Endpoint] = []

    def resolve(self, name: str) -> Any:
        return self.cfg.model(name)

    def known_names(self) -> list[str]:
        return self.cfg.names()

    def models(self) -> list[ModelView]:
        inst = InstanceView("base@gpu0", "base", (0,), InstanceState.AWAKE, "http://e")
        return [
            ModelView(
                m,
                InstanceState.AWAKE if m.name == "base" else InstanceState.STOPPED,
                (inst,) if m.name == "base" else (),
            )
            for m in self.cfg.models
        ]

    def instances(self) -> list[InstanceView]:
        return []

    async def acquire(self, model: Any, timeout_s: float) -> Endpoint:
        self.acquired.append(model.name)
        return Endpoint("base@gpu0", "http://e", "base")

    def release(self, endpoint: Endpoint) -> None:
        self.released.append(endpoint)

    def suspect(self, instance_id: str, detail: str) -> None: ...


async def test_router_sends_an_adapter_to_its_base_with_sglangs_syntax() -> None:
    loop, client = FakeLoop(), FakeClient()
    router = AdapterRouter(loop, Residency(client, Clock()), loop.cfg.models)
    a = loop.cfg.model("a")
    assert a is not None
    ep = await router.acquire(a, 5)
    assert loop.acquired == ["base"] and ep == Endpoint("base@gpu0", "http://e", "base:a")
    assert split_adapter(ep.served_name) == ("base", "a")
    router.release(ep)
    assert loop.released == [Endpoint("base@gpu0", "http://e", "base")]
    views = {v.spec.name: v for v in router.models()}
    assert views["a"].state is InstanceState.AWAKE and views["a"].instances[0].id == "base@gpu0"


async def test_router_gives_the_base_back_when_the_adapter_cannot_load() -> None:
    loop, client = FakeLoop(), FakeClient()
    client.refuse.add("a")
    router = AdapterRouter(loop, Residency(client, Clock()), loop.cfg.models)
    a = loop.cfg.model("a")
    assert a is not None
    with pytest.raises(EngineUnavailable, match="refused a"):
        await router.acquire(a, 5)
    assert loop.released == [Endpoint("base@gpu0", "http://e", "base")]


def test_generate_names_the_adapter_in_lora_path() -> None:
    req = parse_request(b'{"model": "a", "text": "hi"}')
    assert engine_body(req, "drop", "base:a") == b'{"text":"hi","lora_path":"a"}'
    assert engine_body(req, "drop", "base") == b'{"text":"hi"}'
    assert engine_body(req, "rewrite", "base:a") == b'{"model":"base:a","text":"hi"}'
