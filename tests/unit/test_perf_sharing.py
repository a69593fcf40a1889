"""Which sharing is in force changes the colocated-decode cost in one place (perf/sharing.py):
under MPS the TPOT guard and the layout's interference admit colocations that time-slicing
refuses, with the same inputs; under time-slicing nothing changes."""

from __future__ import annotations

import pytest

from orchestrator.layout.interference import Member, miss_probs
from orchestrator.perf.calibration import MPS_DECODE_NEIGHBOUR
from orchestrator.perf.cost import ServerCost
from orchestrator.perf.sharing import decode_weight
from orchestrator.policy.placement import tpot
from orchestrator.policy.placement.cluster import ClusterView, ModelDemand, PlacementParams, ServerView
from orchestrator.policy.placement.kvpr import GpuTally
from orchestrator.types import GpuSharing
from orchestrator.types import InstanceState as S

GIB = 1 << 30
COST = ServerCost(2 * GIB, 16 * GIB, 128 * 1024, 1 * GIB, 0.4, 0.37, 65.0)


def test_factor__timeslice_counts_a_neighbour_whole_mps_the_measured_share() -> None:
    assert decode_weight("timeslice") == 1.0
    assert decode_weight("mps") == MPS_DECODE_NEIGHBOUR
    # the H200 pair of 8B servers, a step beside an equal one: 1.63x alone under MPS (batch 4),
    # time-slicing's model 2x
    assert 1 + decode_weight("mps") == pytest.approx(1.63)
    assert 1 + decode_weight("timeslice") == 2.0


def tally(sharing: GpuSharing, activity: float | None = None) -> tuple[GpuTally, ModelDemand]:
    """An 8B-like server awake on GPU 0 (30 ms steps, 50 ms TPOT SLO), another one to add."""
    a = ModelDemand("a", 1, COST, 0.05, 100.0, step_s=0.03, activity=activity)
    b = ModelDemand("b", 1, COST, 0.05, 100.0, step_s=0.03, activity=activity)
    servers = (ServerView("a@0", "a", (0,), S.AWAKE), ServerView("b@0", "b", (0,), S.PARKED))
    view = ClusterView((a, b), servers, (80 * GIB,), PlacementParams(sharing=sharing))
    return GpuTally(view), b


def test_tpot_guard__admits_under_mps_what_time_slicing_refuses() -> None:
    ts, b = tally("timeslice")
    assert tpot.overflow(ts, (0,), add=b) == (0.06 - 0.05) / 0.05  # a round of both steps
    mps, b = tally("mps")
    assert tpot.overflow(mps, (0,), add=b) == 0.0  # 30 + 0.63 x 30 = 48.9 ms < 50 ms
    assert tpot.bound(mps, b) is not None  # the skip bound holds under MPS too


def test_tpot_guard__an_unknown_model_and_a_known_one_get_the_same_terms_under_mps() -> None:
    led, b = tally("mps", activity=0.5)
    stranger = ModelDemand("b", 1, COST, 0.05, 100.0, step_s=0.03, activity=0.5)  # not the snapshot's
    assert tpot.overflow(led, (0,), add=stranger) == tpot.overflow(led, (0,), add=b)
    step, added, rest, _ = tpot.terms(stranger, decode_weight("mps"))
    assert added == 0.03 * 0.5 * MPS_DECODE_NEIGHBOUR and added + rest == step
    assert tpot.terms(stranger) == (0.03, 0.03 * 0.5, 0.03 * (1.0 - 0.5), 0.05)  # time-slicing: as before


def test_tpot_guard__both_awake_overflow_only_under_time_slicing() -> None:
    cases: tuple[tuple[GpuSharing, bool], ...] = (("timeslice", True), ("mps", False))
    for sharing, over in cases:
        a = ModelDemand("a", 1, COST, 0.05, 100.0, step_s=0.03)
        b = ModelDemand("b", 1, COST, 0.05, 100.0, step_s=0.03)
        servers = (ServerView("a@0", "a", (0,), S.AWAKE), ServerView("b@0", "b", (0,), S.AWAKE))
        led = GpuTally(ClusterView((a, b), servers, (80 * GIB,), PlacementParams(sharing=sharing)))
        assert (tpot.gpu_overflow(led, 0) > 0) is over
        assert (tpot.may_overflow(led) == [0]) is over


def test_interference__mps_misses_less_and_time_slicing_is_the_default() -> None:
    members = [Member("small", 0.004, 0.6, 0.018), Member("big", 0.016, 0.6, 0.05)]
    ts = miss_probs(members)
    assert miss_probs(members, sharing="timeslice") == ts
    mps = miss_probs(members, sharing="mps")
    assert ts[0] > 0.5 and mps[0] == 0.0  # 4 + 16 ms > an 18 ms SLO; 4 + 0.63 x 16 fits
