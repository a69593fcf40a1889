"""Shape pools: the config section, the pure choice of a server (time passed in), what each
server holds, and the router over a recording fake loop and a fake re-targeter: never a switch
on a server the loop has not handed out awake, the probe checked against each model's own
output, and the supervisor told the new probe output."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import parse_config
from orchestrator.deployment import derive
from orchestrator.errors import ConfigError, EngineUnavailable
from orchestrator.perf.cost import retarget_time
from orchestrator.policy.lora import Popularity
from orchestrator.policy.pools import Choice, Costs, Slot, decide
from orchestrator.pools.holdings import Holdings
from orchestrator.pools.router import PoolRouter, pool_costs
from orchestrator.shapes import load_shape
from orchestrator.types import Endpoint, InstanceState, InstanceView, ModelView

FILE: dict[str, Any] = {
    "host": {"gpus": 1},
    "models": [
        {"name": "a", "model_path": "llama-3.1-8b", "pool": "p"},
        {"name": "b", "model_path": "/ck/b", "shape": "llama-3.1-8b", "pool": "p"},
        {"name": "c", "model_path": "/ck/c", "shape": "llama-3.1-8b", "pool": "p"},
        {"name": "solo", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]},
    ],
    "pools": [{"name": "p", "servers": [{"gpus": [0]}, {"gpus": [0], "on": False}]}],
}
COSTS = Costs(retarget_s=6.0, wake_s=0.4)


# -- config ---------------------------------------------------------------------------------------
def test_a_pool_becomes_hidden_server_models_and_pooled_models_have_none() -> None:
    cfg = parse_config(FILE)
    (pool,) = cfg.pools
    assert pool.slots == ("p-0", "p-1") and pool.members == ("a", "b", "c") and pool.model_path == "llama-3.1-8b"
    assert [i.id for i in cfg.instances] == ["solo@gpu0", "p-0@gpu0", "p-1@gpu0"]
    a, slot = cfg.model("a"), cfg.model("p-1")
    assert a is not None and a.pool == "p" and a.placements == ()
    assert slot is not None and slot.slot_of == "p" and not slot.placements[0].on
    assert pool_costs(derive(cfg), "p") == Costs(retarget_time(load_shape("llama-3.1-8b")), pytest.approx(0.4, abs=0.3))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"pools": []}, "the file has no `pools:` section"),
        ({"pools": [{"name": "p"}]}, "pools[0].servers: needs a non-empty list"),
        ({"pools": [{"name": "q", "servers": [{"gpus": [0]}]}]}, "no model names pool 'q'"),
    ],
)
def test_bad_pools_name_their_field(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**FILE, **change})
    assert problem in str(exc.value)


def test_a_pool_needs_one_shape() -> None:
    models = [*FILE["models"][:3], {"name": "odd", "model_path": "tiny-llama", "pool": "p"}]
    with pytest.raises(ConfigError, match="odd differ from a"):
        parse_config({**FILE, "models": models})


# -- policy ---------------------------------------------------------------------------------------
def slot(name: str, holds: str | None, in_flight: int = 0, switching: str | None = None, parked: bool = False) -> Slot:
    return Slot(name, holds, in_flight, switching, parked)


def test_route_to_a_server_holding_the_weights_preferring_awake_and_least_loaded() -> None:
    slots = (slot("s0", "/a", 3), slot("s1", "/a", 1), slot("s2", "/a", 0, parked=True), slot("s3", "/b"))
    assert decide(slots, "/a", {}, COSTS, 0) == Choice("route", "s1")


def test_retarget_the_server_whose_switch_costs_least() -> None:
    pop = {"/hot": Popularity(5.0, 0.0), "/cold": Popularity(0.1, 0.0)}
    slots = (slot("s0", "/hot"), slot("s1", "/cold"), slot("s2", "/busy", 2))
    assert decide(slots, "/new", pop, COSTS, now=0) == Choice("retarget", "s1")
    # a parked server costs its wake on top: an idle awake one of equal popularity goes first
    slots2 = (slot("s0", "/x", parked=True), slot("s1", "/y"))
    assert decide(slots2, "/new", {}, COSTS, now=0) == Choice("retarget", "s1")
    # popularity decays: the model hot ten minutes ago is cheap to evict now
    aged = {"/hot": Popularity(5.0, 0.0), "/cold": Popularity(1.0, 600.0)}
    assert decide(slots, "/new", aged, COSTS, now=600) == Choice("retarget", "s0")


def test_wait_when_every_server_is_busy_or_already_switching_to_it() -> None:
    assert decide((slot("s0", "/a", 1),), "/b", {}, COSTS, 0) == Choice("wait")
    assert decide((slot("s0", "/a", 1, switching="/b"), slot("s1", "/c")), "/b", {}, COSTS, 0) == Choice("wait")


# -- router ---------------------------------------------------------------------------------------
class FakeLoop:
    """The control loop as the proxy sees it: every pool server awake unless told parked."""

    def __init__(self) -> None:
        self.cfg = parse_config(FILE)
        self.parked: set[str] = set()
        self.acquired: list[str] = []
        self.released: list[str] = []

    def resolve(self, name: str) -> Any:
        return self.cfg.model(name)

    def known_names(self) -> list[str]:
        return self.cfg.names()

    def models(self) -> list[ModelView]:
        out = []
        for m in self.cfg.models:
            state = InstanceState.PARKED if m.name in self.parked else InstanceState.AWAKE
            views = tuple(
                InstanceView(i.id, m.name, i.gpus, state, f"http://{i.id}") for i in self.cfg.instances if i.model is m
            )
            out.append(ModelView(m, state if views else InstanceState.STOPPED, views))
        return out

    def instances(self) -> list[InstanceView]:
        return [i for m in self.models() for i in m.instances]

    async def acquire(self, model: Any, timeout_s: float) -> Endpoint:
        self.acquired.append(model.name)
        self.parked.discard(model.name)  # the loop wakes it before answering
        iid = next(i.id for i in self.cfg.instances if i.model is model)
        return Endpoint(iid, f"http://{iid}", model.name)

    def release(self, endpoint: Endpoint) -> None:
        self.released.append(endpoint.instance_id)

    def suspect(self, instance_id: str, detail: str) -> None: ...


class FakeRetargeter:
    """Outputs per weights path, like the sim: ``out(path)``; records every switch and whether
    the loop had handed the server out (awake) when it came."""

    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.switches: list[tuple[str, str]] = []
        self.stuck = False  # the switch "succeeds" but the weights stay

    async def switch(self, base_url: str, model_path: str, gpus: tuple[int, ...] = ()) -> tuple[str, dict[str, float]]:
        server = base_url.removeprefix("http://").split("@")[0]
        assert server not in self.loop.parked, "update_weights_from_disk on a parked server"
        self.switches.append((server, model_path))
        return (f"out:{self.last(server)}" if self.stuck else f"out:{model_path}"), {"update_weights_s": 0.0}

    def last(self, server: str) -> str:
        return "llama-3.1-8b"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def router_for(loop: FakeLoop) -> tuple[PoolRouter, FakeRetargeter, Holdings, list[tuple[str, str]]]:
    holdings, told = Holdings(loop.cfg.pools), list[tuple[str, str]]()
    rt = FakeRetargeter(loop)
    router = PoolRouter(loop, holdings, rt, loop.cfg.models, lambda p: COSTS, lambda i, o: told.append((i, o)), Clock())
    return router, rt, holdings, told


def spec(loop: FakeLoop, name: str) -> Any:
    m = loop.cfg.model(name)
    assert m is not None
    return m


async def test_routes_to_a_server_holding_the_weights_without_a_switch() -> None:
    loop = FakeLoop()
    router, rt, _, _ = router_for(loop)
    ep = await router.acquire(spec(loop, "a"), 5)
    assert ep.instance_id in ("p-0@gpu0", "p-1@gpu0") and rt.switches == []
    router.release(ep)
    assert loop.released == [ep.instance_id]


async def test_retargets_an_awake_server_checks_the_probe_and_tells_the_supervisor() -> None:
    loop = FakeLoop()
    loop.parked.add("p-1")
    router, rt, holdings, told = router_for(loop)
    ep = await router.acquire(spec(loop, "b"), 5)
    assert rt.switches == [("p-0", "/ck/b")]  # the awake one; never the parked one
    assert told == [(ep.instance_id, "out:/ck/b")] and holdings.holds("p-0") == "/ck/b"
    busy = asyncio.create_task(router.acquire(spec(loop, "c"), 5))  # p-0 is busy: p-1 is woken first
    ep_c = await asyncio.wait_for(busy, 1)
    assert ep_c.instance_id == "p-1@gpu0" and loop.acquired[-1] == "p-1" and rt.switches[-1] == ("p-1", "/ck/c")
    router.release(ep)
    router.release(ep_c)


async def test_a_switch_that_did_not_take_is_refused() -> None:
    loop = FakeLoop()
    router, rt, holdings, _ = router_for(loop)
    ep = await router.acquire(spec(loop, "a"), 5)  # the start weights' output becomes a's reference
    router.release(ep)
    holdings.check_probe("p-0", None, "llama-3.1-8b", "out:llama-3.1-8b")
    rt.stuck = True
    with pytest.raises(EngineUnavailable, match="did not change"):
        await router.acquire(spec(loop, "b"), 5)
    assert holdings.holds(rt.switches[-1][0]) is None  # unknown after a failed switch: never routed to
    assert loop.released  # the server was given back


async def test_pool_servers_are_hidden_from_clients() -> None:
    loop = FakeLoop()
    router, _, _, _ = router_for(loop)
    assert router.resolve("p-0") is None and "p-0" not in router.known_names()
    views = {v.spec.name: v for v in router.models()}
    assert set(views) == {"a", "b", "c", "solo"}
    assert views["a"].state is InstanceState.AWAKE and views["b"].state is InstanceState.STOPPED


def test_a_restarted_server_holds_its_start_weights_again() -> None:
    loop = FakeLoop()
    holdings = Holdings(loop.cfg.pools)
    holdings.begin_switch("p-0", "/ck/b")
    holdings.end_switch("p-0", "/ck/b")
    holdings.observe(InstanceView("p-0@gpu0", "p-0", (0,), InstanceState.STARTING, None))
    assert holdings.holds("p-0") == "llama-3.1-8b"


def test_plan_shows_the_pools(tmp_path: Any) -> None:
    import argparse

    import yaml
    from rich.console import Console

    from orchestrator.cli.plan import run

    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(FILE))
    con = Console(record=True, width=200)
    args = argparse.Namespace(file=str(f), gpus=None, rates=None, tokens_per_request=512)
    assert run(args, con) == 0
    text = con.export_text()
    assert "shape pools" in text and "p-0@gpu0, p-1@gpu0" in text
    assert f"{retarget_time(load_shape('llama-3.1-8b')):.2f} s" in text


def test_metrics_and_the_dashboard_state_show_what_each_server_holds() -> None:
    from orchestrator.dashboard import readings, state
    from orchestrator.dashboard.history import History
    from orchestrator.metrics import ChimeraMetrics

    loop, metrics = FakeLoop(), ChimeraMetrics()
    metrics.set_server_holds("p-0@gpu0", "p", "llama-3.1-8b")
    metrics.set_server_holds("p-0@gpu0", "p", "/ck/b")  # switched: the old weights go to 0
    metrics.set_server_holds("p-1@gpu0", "p", "llama-3.1-8b")
    router, _, _, _ = router_for(loop)
    body = state.build(router.models(), derive(loop.cfg), readings.read(metrics), History(), 0.0)
    assert body["holds"] == {
        "p-0@gpu0": {"model_path": "/ck/b", "models": ["b"]},
        "p-1@gpu0": {"model_path": "llama-3.1-8b", "models": ["a"]},
    }
    parts = [p[0] for g in body["gpus"] for p in g["parts"]]
    assert parts.count("p-0@gpu0") == len(set(p[2] for g in body["gpus"] for p in g["parts"] if p[0] == "p-0@gpu0"))


def test_a_cold_model_waits_for_a_colder_server_until_its_patience_runs_out() -> None:
    pop = {"/hot": Popularity(5.0, 0.0), "/warm": Popularity(2.0, 0.0), "/cold": Popularity(1.0, 0.0)}
    slots = (slot("s0", "/hot"), slot("s1", "/warm"))
    assert decide(slots, "/cold", pop, COSTS, now=0, waited_s=1, patience_s=10) == Choice("wait")
    assert decide(slots, "/cold", pop, COSTS, now=0, waited_s=10, patience_s=10) == Choice("retarget", "s1")
    assert decide(slots, "/hot2", {**pop, "/hot2": Popularity(3.0, 0.0)}, COSTS, 0, 1, 10) == Choice("retarget", "s1")


def test_a_tp2_pool() -> None:
    cfg = parse_config(
        {
            "host": {"gpus": 2},
            "models": [{"name": "a", "model_path": "llama-3.1-8b", "tp_size": 2, "pool": "p"}],
            "pools": [{"name": "p", "servers": [{"gpus": [0, 1]}]}],
        }
    )
    assert [i.id for i in cfg.instances] == ["p-0@gpu0+1"] and cfg.instances[0].model.tp_size == 2


def test_two_paths_to_one_checkpoint_may_answer_alike(tmp_path: Path) -> None:
    from orchestrator.pools.holdings import same_files

    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for d in (a, b, c):
        d.mkdir()
    (a / "model.safetensors").write_bytes(b"w" * 8)
    os.link(a / "model.safetensors", b / "model.safetensors")  # b: a hard link to a's weights
    (c / "model.safetensors").write_bytes(b"w" * 8)  # c: a copy, byte for byte
    (tmp_path / "s").symlink_to(a)
    assert same_files(str(a), str(b)) and same_files(str(a), str(tmp_path / "s"))
    assert not same_files(str(a), str(c)) and not same_files("llama-3.1-8b", "llama-3.1-8b")
    cfg = parse_config(
        {
            "models": [
                {"name": n, "model_path": str(d), "shape": "llama-3.1-8b", "pool": "p"}
                for n, d in (("a", a), ("b", b), ("c", c))
            ],
            "pools": [{"name": "p", "servers": [{"gpus": [0]}]}],
        }
    )
    holdings = Holdings(cfg.pools)
    assert holdings.check_probe("p-0", None, str(a), "out") is None
    assert holdings.check_probe("p-0", str(a), str(b), "out") is None  # the same weights: the same answer
    assert "did not change" in (holdings.check_probe("p-0", str(a), str(c), "out") or "")
