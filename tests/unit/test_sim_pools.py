"""Shape pools in the simulator (bench/sim/pools.py): every pooled request is served, a switch
takes the cost model's re-target time, no request is served by another model's weights, and the
runs without pools are unchanged."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bench.sim.chimera import ChimeraOptions
from bench.sim.experiments import run_one, spec
from bench.sim.fleet import fleet, make_model
from bench.sim.pools import PooledChimera, PoolOptions, fewest_gpus, hidden_of, plan_pools, simulate_pooled
from bench.sim.servers import SimModel, SimReq, SimServer
from bench.sim.simulator import Simulator
from bench.traces.request import BenchRequest
from bench.traces.synthetic import SyntheticSpec, generate
from orchestrator.perf.cost import retarget_time
from orchestrator.shapes import load_shape

ALL_POOLED = PoolOptions(fraction=1.0, servers_per_member=0.01, min_members=2)  # one server for all


def _model(name: str, shape: str) -> SimModel:
    """A model with finite objectives: a request waits for a colder server only while a switch
    would still meet its TTFT (none here: every switch is longer), as live."""
    return replace(make_model(name, shape), ttft_slo=0.2, tpot_slo=1.0, _base={})


def test_plan_pools__least_popular_per_shape_tp1_and_cheap_switches_only() -> None:
    models = fleet("mix58")
    rps = {m.name: 1.0 / (i + 1) for i, m in enumerate(models)}  # fleet order = popularity order
    plan = plan_pools(models, rps, PoolOptions(fraction=0.5, servers_per_member=0.5, max_retarget_s=10.0))
    assert set(plan.members) == {"pool-llama-3.2-1b", "pool-llama-3.2-3b", "pool-llama-3.1-8b", "pool-qwen2.5-7b"}
    ones = [m.name for m in models if m.shape_name == "llama-3.2-1b"]
    assert set(plan.members["pool-llama-3.2-1b"]) == set(ones[11:])  # the 11 least popular of 22
    assert len(plan.servers["pool-llama-3.2-1b"]) == 6  # ceil(11 x 0.5)
    # a 32B switch (~26 s) is too dear, a 70B is TP 2: both keep dedicated servers
    assert not any("32b" in m or "70b" in m for m in plan.pool_of)
    assert set(hidden_of(plan).values()) == {h for hs in plan.servers.values() for h in hs}


def _trace(names: list[str], seconds: float, rate: float, seed: int = 3) -> list[BenchRequest]:
    sp = SyntheticSpec(rate=rate, duration_s=seconds, alpha=0.5, cv=2.0, seed=seed)
    return generate(sp, names)


class Recording(PooledChimera):
    """Records, for every pooled request completed, the model whose weights its server held."""

    served: list[tuple[str, str | None]]

    def on_complete(self, sim: Simulator, server: SimServer, req: SimReq) -> None:
        if req.id in self.pool.origin:
            self.served.append((self.pool.origin[req.id], self.pool.holds.get(server.model.name)))
        super().on_complete(sim, server, req)


def test_pooled_run__every_request_served_by_its_own_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    models = [_model(f"p{i}", "llama-3.2-1b") for i in range(6)]
    trace = _trace([m.name for m in models], 300.0, 3.0)
    served: list[tuple[str, str | None]] = []
    monkeypatch.setattr("bench.sim.pools.PooledChimera", Recording)
    monkeypatch.setattr(Recording, "served", served, raising=False)
    opts = PoolOptions(fraction=1.0, servers_per_member=0.34, min_members=2)  # 6 models on 3 servers
    res, ctl = simulate_pooled(models, 1, trace, 300.0, popts=opts, copts=ChimeraOptions(on_late="serve"))
    assert isinstance(ctl, Recording)
    assert res.counters["pool_servers"] == 3 and res.counters["pooled_models"] == 6
    assert res.counters["retargets"] > 0  # the pool did switch
    assert res.shed == 0 and res.unfinished == 0  # none lost
    assert all(not math.isnan(r.finish) for r in ctl.sim.reqs)
    assert {r.model for r in ctl.sim.reqs} == {m.name for m in models}  # counted under their own names
    assert len(served) == len(trace)
    assert all(model == held for model, held in served)
    assert res.counters["wrong_weights"] == 0


def test_pooled_run__a_switch_takes_the_cost_models_retarget_time() -> None:
    a, b = _model("a", "llama-3.2-3b"), _model("b", "llama-3.2-3b")
    trace = [BenchRequest(0, 1.0, "a", 64, 4), BenchRequest(1, 2.0, "a", 64, 4), BenchRequest(2, 20.0, "b", 64, 4)]
    res, ctl = simulate_pooled([a, b], 1, trace, 30.0, popts=ALL_POOLED, copts=ChimeraOptions(on_late="serve"))
    assert res.counters["pool_servers"] == 1 and res.counters["retargets"] == 1
    ra, _, rb = sorted(ctl.sim.reqs, key=lambda r: r.id)
    switch = retarget_time(load_shape("llama-3.2-3b"))
    assert a.cost.retarget_s == switch > 2.0  # the one cost model: weights / disk bandwidth
    assert ra.first - ra.arrival < 0.1  # its server started with a's weights, awake
    prefill = b.lat.prefill_time([(64, 0)])
    # b waits for the switch, then its prefill (the server was awake: no wake)
    assert rb.first - rb.arrival == pytest.approx(switch + prefill, abs=0.01)


def test_pooled_run__a_parked_server_wakes_before_its_switch() -> None:
    a, b = _model("a", "llama-3.2-1b"), _model("b", "llama-3.2-1b")
    # a's last request at 1 s; b at 200 s, long after the server could be parked as idle
    trace = [BenchRequest(0, 1.0, "a", 64, 4), BenchRequest(1, 200.0, "b", 64, 4)]
    res, ctl = simulate_pooled(
        [a, b], 1, trace, 210.0, popts=ALL_POOLED, copts=ChimeraOptions(park_when="always", on_late="serve")
    )
    rb = max(ctl.sim.reqs, key=lambda r: r.id)
    assert res.counters["parks"] >= 1 and res.counters["wakes"] >= 1
    assert rb.first - rb.arrival >= a.cost.wake_s + a.cost.retarget_s
    assert res.counters["wrong_weights"] == 0 and not math.isnan(rb.finish)


def test_mix58_without_pools_is_unchanged() -> None:
    """The same seed gives the numbers the simulator gave without pools (pinned again after the
    cost model's memory refit of 2026-12-04, with the pools' code unchanged: was 12 shed,
    99.096% joint, 10 wakes, 18 parks, 173 decisions; then 171 decisions, and 185 since the
    starvation guard weighs busy neighbours by request rate: blocked models decide again; then 10
    shed, 98.978% joint, 8 wakes, 16 parks, 185 decisions, before servers were charged as the
    deployment starts them on a crowded GPU: deployment.crowded_cost; then 5 shed and p99 TTFT
    98.7 ms, before the H100's colocation became the form measured on the H200; then 7 shed and 1
    memory violation, before the simulator's wakes passed the live wake gate)."""
    res = run_one("chimera", "mix58", 16, spec(10.0, 300.0, 600.0))
    assert (res.requests, res.shed, res.unfinished) == (2543, 8, 0)
    assert res.joint == pytest.approx(0.9968541093197011, abs=1e-12)
    assert res.p99_ttft_s == pytest.approx(0.08213161461138441, abs=1e-12)
    assert res.counters == {
        "wakes": 6,
        "parks": 11,
        "starts": 0,
        "migrations": 0,
        "decisions": 181,
        "memory_violations": 0,
    }


def test_fewest_gpus__bisects_and_says_none_when_the_top_misses() -> None:
    calls: list[int] = []

    def att(g: int) -> float:
        calls.append(g)
        return 0.995 if g >= 15 else 0.9

    got = fewest_gpus(att, 12, 18)
    assert got["fewest_gpus"] == 15 and len(calls) == len(set(calls)) <= 4
    assert fewest_gpus(lambda g: 0.5, 12, 18) == {"fewest_gpus": None, "grid": [(18, 0.5)]}


def test_cli__run_with_pools_and_search(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.sim.__main__ import main

    argv = ["run", "--mix", "mix18", "--gpus", "4", "--rate", "4", "--duration", "30", "--pools", "--search", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert '"system": "chimera-pools"' in out and '"pooled_models": 6' in out
    assert "SIMULATED chimera with pools: fewest GPUs at 99% joint attainment:" in out
    with pytest.raises(SystemExit):
        main(["run", "--system", "muxserve-like", "--pools"])


def test_pinned_pools_switch_at_the_push_cost_and_pool_the_shapes_it_makes_cheap() -> None:
    from bench.sim.pools import switch_s

    models = fleet("mix58")
    rps = {m.name: 1.0 / (i + 1) for i, m in enumerate(models)}
    eight = next(m for m in models if m.shape_name == "llama-3.1-8b")
    assert switch_s(eight, "page_cache") == eight.cost.retarget_s
    assert switch_s(eight, "pinned") == retarget_time(load_shape("llama-3.1-8b"), 1, pinned=True) < 0.5
    page = plan_pools(models, rps, PoolOptions(max_retarget_s=3.0))
    pinned = plan_pools(models, rps, PoolOptions(max_retarget_s=3.0, stage="pinned"))
    assert "pool-llama-3.1-8b" not in page.members and "pool-llama-3.1-8b" in pinned.members  # 6.4 s vs 0.35 s
    assert not any("70b" in m for m in pinned.pool_of)  # TP 2 keeps its servers either way
