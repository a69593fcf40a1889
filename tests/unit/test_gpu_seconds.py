"""GPU-seconds by memory share: the pure accrual, its owner driven by a hand-moved clock, and
the counter as ``GET /metrics`` renders it."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.config import GIB
from orchestrator.dashboard import readings, state
from orchestrator.metrics import ChimeraMetrics
from orchestrator.metrics.gpu_seconds import GpuSeconds, Holding, accrue, held_bytes
from orchestrator.types import InstanceState, InstanceView
from tests.unit.control_fakes import Clock
from tests.unit.test_dashboard import deployment

S = InstanceState
GPU = 80 * GIB


def test_accrue_splits_by_memory_share_and_counts_every_gpu() -> None:
    got = accrue(
        [
            Holding("a", S.AWAKE, GPU // 4, 1),  # a quarter of one GPU
            Holding("b", S.AWAKE, GPU // 2, 2),  # half of each of two GPUs
            Holding("a", S.PARKED, GPU // 10, 1),
            Holding("c", S.STOPPED, 0, 1),  # holds nothing: no series
        ],
        10.0,
        GPU,
    )
    assert got == pytest.approx({("a", "awake"): 2.5, ("b", "awake"): 10.0, ("a", "parked"): 1.0})


def test_accrue_caps_a_share_at_one_gpu_and_ignores_a_clock_that_did_not_move() -> None:
    assert accrue([Holding("a", S.AWAKE, 2 * GPU, 1)], 3.0, GPU) == {("a", "awake"): 3.0}
    assert accrue([Holding("a", S.AWAKE, GPU, 1)], 0.0, GPU) == {}
    assert accrue([Holding("a", S.AWAKE, GPU, 1)], -1.0, GPU) == {}


def test_held_bytes_by_state() -> None:
    dep = deployment()  # mode full: both run with the shim
    fa = dep.instances["a@gpu0"]
    assert held_bytes(S.STOPPED, fa, 5 * GIB) == 0
    assert held_bytes(S.BACKOFF, fa, None) == 0
    assert held_bytes(S.PARKED, fa, 5 * GIB) == fa.cost.parked_bytes
    assert held_bytes(S.AWAKE, fa, 5 * GIB) == fa.cost.held_awake_bytes + 5 * GIB
    assert held_bytes(S.WAKING, fa, None) == fa.cost.held_awake_bytes + fa.start_limit_bytes
    static = deployment("static").instances["b@gpu0"]
    assert held_bytes(S.AWAKE, static, None) == static.cost.held_awake_bytes + 4 * GIB


@pytest.mark.parametrize("st", list(InstanceState))
def test_billed_bytes_are_the_dashboards_memory_bars(st: InstanceState) -> None:
    dep = deployment()
    metrics = ChimeraMetrics()
    metrics.set_kv("a", "a@gpu0", 8 * GIB, 3 * GIB, 1000)
    f = dep.instances["a@gpu0"]
    bars = state.instance_memory(st, f, readings.read(metrics))
    assert sum(b for _, b in bars) == held_bytes(st, f, 3 * GIB)


def gpu_seconds(metrics: ChimeraMetrics) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.render()[0].decode()):
        for s in fam.samples:
            if s.name == "chimera_gpu_seconds_total":
                out[(s.labels["model"], s.labels["state"])] = s.value
    return out


def test_owner_bills_each_state_for_the_time_it_lasted() -> None:
    dep = deployment()
    metrics, clock = ChimeraMetrics(), Clock(100.0)
    acc = GpuSeconds(dep.instances, dep.gpu_bytes, metrics.gpu_seconds, clock)
    fa, fb = dep.instances["a@gpu0"], dep.instances["b@gpu0"]
    acc.observe(InstanceView("a@gpu0", "a", (0,), S.AWAKE, "http://x"))
    acc.observe(InstanceView("b@gpu0", "b", (0,), S.PARKED, None))
    clock.t += 10
    acc.kv_mapped("a@gpu0", 6 * GIB)  # the first 10 s at its start-up limit
    clock.t += 5
    acc.observe(InstanceView("a@gpu0", "a", (0,), S.PARKING, "http://x"))
    clock.t += 2
    acc.observe(InstanceView("a@gpu0", "a", (0,), S.PARKED, None))
    clock.t += 4
    acc.advance()
    got = gpu_seconds(metrics)
    awake = (10 * (fa.cost.held_awake_bytes + fa.start_limit_bytes) + 5 * (fa.cost.held_awake_bytes + 6 * GIB)) / GPU
    assert got[("a", "awake")] == pytest.approx(awake)
    assert got[("a", "parking")] == pytest.approx(2 * (fa.cost.held_awake_bytes + 6 * GIB) / GPU)
    assert got[("a", "parked")] == pytest.approx(4 * fa.cost.parked_bytes / GPU)
    assert got[("b", "parked")] == pytest.approx(21 * fb.cost.parked_bytes / GPU)
    # a parked instance forgot its KV: woken, it starts again from its start-up limit
    acc.observe(InstanceView("a@gpu0", "a", (0,), S.AWAKE, "http://x"))
    clock.t += 1
    acc.advance()
    assert gpu_seconds(metrics)[("a", "awake")] == pytest.approx(
        awake + (fa.cost.held_awake_bytes + fa.start_limit_bytes) / GPU
    )
