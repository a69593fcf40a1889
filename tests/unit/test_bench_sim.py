"""The discrete-event simulator (bench/sim): exactness on a lone request, determinism, every
system resolves every request without over-committing memory, attainment counts misses."""

from __future__ import annotations

import math
import random

import pytest

from bench.sim.baselines import StaticPartition
from bench.sim.engine import SimReq
from bench.sim.experiments import determinism_probe, run_one, spec
from bench.sim.fleet import H100_BYTES, fleet, make_model
from bench.sim.metrics import summarize
from bench.sim.run import SYSTEMS
from bench.sim.simulator import Counters, Simulator
from bench.traces.request import BenchRequest


def test_sim__a_lone_request_costs_one_prefill_then_one_step_per_token() -> None:
    m = make_model("m", "llama-3.1-8b")
    sim = Simulator({"m": m}, 1, H100_BYTES, StaticPartition({"m": 1.0}))
    sim.run([BenchRequest(0, 1.0, "m", 300, 5)])
    (r,) = sim.reqs
    assert r.first - r.arrival == pytest.approx(m.lat.prefill_time([(300, 0)]))
    steps = sum(m.lat.decode_time([300 + k]) for k in range(1, 5))  # 4 steps after the first token
    assert r.finish - r.first == pytest.approx(steps, rel=1e-6)


def test_sim__decode_time_is_affine_in_context_as_the_engine_assumes() -> None:
    m = make_model("m", "llama-3.2-3b")
    rng = random.Random(3)
    for _ in range(20):
        ctx = [rng.randrange(1, 4000) for _ in range(rng.randrange(1, 64))]
        assert m.decode_s(len(ctx), sum(ctx)) == pytest.approx(m.lat.decode_time(ctx), rel=1e-9)


def test_sim__same_seed_same_result() -> None:
    assert determinism_probe(5) == determinism_probe(5)
    assert determinism_probe(5) != determinism_probe(6)


@pytest.mark.parametrize("system", SYSTEMS)
def test_sim__every_system_resolves_requests_within_memory(system: str) -> None:
    r = run_one(system, "mix8", 2, spec(6.0, 90.0, 60.0))
    assert r.counters["memory_violations"] == 0
    assert r.unfinished == 0 and r.requests > 400
    assert 0.0 <= r.joint <= min(r.ttft_ok, r.tpot_ok) <= 1.0


def test_sim__shed_and_unfinished_requests_are_misses() -> None:
    models = {m.name: m for m in fleet("mix8")[:1]}
    name = next(iter(models))
    reqs = [SimReq(i, name, 0.0, 10, 10) for i in range(4)]
    reqs[0].first, reqs[0].finish = 0.01, 0.02  # met (SLOs are infinite here)
    reqs[1].shed = True
    res = summarize("x", 1, reqs, models, 1.0, 0.0, Counters())
    assert res.joint == 0.25 and res.shed == 1 and res.unfinished == 2
    assert math.isnan(reqs[2].finish)
