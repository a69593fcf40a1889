"""Warm-start layout (orchestrator/policy/layout.py) and the rate window (rates.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.policy.cluster import ModelDemand, ServerCost
from orchestrator.policy.layout import layout
from orchestrator.policy.rates import RateWindow

GIB = 1 << 30
COST = ServerCost(2 * GIB, 16 * GIB, 128 * 1024, 1 * GIB, 0.4, 0.37, 65.0)


def m(name: str, awake_gb: float = 16, rate: float = 0.0, tp: int = 1) -> ModelDemand:
    return ModelDemand(name, tp, replace(COST, awake_bytes=int(awake_gb * GIB)), 0.05, rate)


def test_layout__spreads_hot_models_by_expected_pressure() -> None:
    out = layout((m("a", rate=5000), m("b", rate=5000), m("c", rate=10)), (80 * GIB,) * 2)
    gpus = dict(out.servers)
    assert gpus["a"] != gpus["b"] and out.unplaced == ()


def test_layout__every_gpu_can_still_wake_its_biggest_model_alone() -> None:
    out = layout((m("big", 70), m("big2", 70), m("s1", 8), m("s2", 8)), (80 * GIB,) * 2)
    gpus = dict(out.servers)
    assert gpus["big"] != gpus["big2"]
    assert out.unplaced == ()


def test_layout__tp_groups_use_distinct_gpus_and_unfit_models_are_reported() -> None:
    out = layout((m("tp", 60, tp=2), m("huge", 200)), (80 * GIB,) * 2)
    assert dict(out.servers)["tp"] == (0, 1)
    assert out.unplaced == ("huge",)


def test_layout__replicas_go_to_other_gpus() -> None:
    out = layout((m("a", rate=100),), (80 * GIB,) * 3, replicas={"a": 2})
    placed = [g for name, g in out.servers if name == "a"]
    assert len(placed) == 2 and placed[0] != placed[1]


def test_layout__round_robin_deals_models_in_turn_ignoring_pressure() -> None:
    models = (m("a", 10, rate=5000), m("b", 10), m("c", 10, rate=5000), m("d", 10))
    out = layout(models, (80 * GIB,) * 2, round_robin=True)
    assert dict(out.servers) == {"a": (0,), "b": (1,), "c": (0,), "d": (1,)}


def test_rate_window__averages_over_the_window_and_forgets() -> None:
    w = RateWindow(60.0)
    w.add(0.0, 600.0)
    w.add(30.0, 600.0)
    assert w.rate(30.0) == pytest.approx(20.0)
    assert w.rate(65.0) == pytest.approx(10.0)
    assert w.rate(200.0) == 0.0 and w.last() is None
    with pytest.raises(ValueError):
        RateWindow(0)
