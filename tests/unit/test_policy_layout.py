"""Warm-start layout (orchestrator/layout/packing.py), its profiles (profiles.py) and the rate
window (rates.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.layout.packing import layout
from orchestrator.layout.profiles import Profiles, awake_profile
from orchestrator.perf.cost import ServerCost
from orchestrator.policy.placement.cluster import ModelDemand
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


ON_OFF = (1.0,) * 6 + (0.0,) * 6  # awake the first half of the profile, parked the second
OFF_ON = (0.0,) * 6 + (1.0,) * 6


def test_layout__cold_models_share_gpu_parked() -> None:
    """Four 30 GB models that are each awake a quarter of the time, in turn, all fit the GPU
    the 60 GB model leaves free: three parked at any time, each waking when its turn comes."""
    quarter = [tuple(1.0 if k == q else 0.0 for k in range(4) for _ in range(3)) for q in range(4)]
    models = (m("big", 60, rate=5000), *(m(f"q{q}", 30, rate=100) for q in range(4)))
    prof = {"big": (1.0,) * 12, **{f"q{q}": quarter[q] for q in range(4)}}
    gpus = dict(layout(models, (80 * GIB,) * 2, awake_profile=prof).servers)
    assert gpus["big"] == (0,) and all(gpus[f"q{q}"] == (1,) for q in range(4))


def test_layout__models_awake_together_are_put_apart_when_memory_is_short() -> None:
    models = (m("a", 40, rate=100), m("b", 40, rate=100), m("c", 40, rate=100), m("d", 40, rate=100))
    prof = {"a": ON_OFF, "b": ON_OFF, "c": OFF_ON, "d": OFF_ON}
    gpus = dict(layout(models, (80 * GIB,) * 2, awake_profile=prof).servers)
    assert gpus["a"] != gpus["b"] and gpus["c"] != gpus["d"]


def tiny(name: str, activity: float, rate: float = 300.0) -> ModelDemand:
    return replace(m(name, 5, rate=rate), step_s=0.0017, tpot_slo_s=0.018, activity=activity)


def slow(name: str, activity: float) -> ModelDemand:
    return replace(m(name, 60, rate=300), step_s=0.025, tpot_slo_s=0.3, activity=activity)


def test_layout__small_models_stay_off_a_gpu_whose_slow_decode_breaks_their_tpot() -> None:
    out = dict(layout((slow("32b", 0.5), tiny("1b", 0.2), tiny("1b-2", 0.2)), (80 * GIB,) * 2).servers)
    assert out["1b"] != out["32b"] and out["1b-2"] != out["32b"]


def test_layout__a_slow_decoder_that_takes_turns_with_a_small_model_may_host_it() -> None:
    """kappa ~ 0: the 32B decodes only while the 1B has no requests, so the 1B never sees its
    25 ms steps; the GPU without it is the one already crowded by the other 1B."""
    act_on = (0.5,) * 6 + (0.0,) * 6
    act_off = (0.0,) * 6 + (0.5,) * 6
    models = (slow("32b", 0.25), tiny("1b", 0.25), tiny("busy-1b", 0.9, rate=5000))
    awake = {"32b": ON_OFF, "1b": OFF_ON, "busy-1b": (1.0,) * 12}
    active = {"32b": act_on, "1b": act_off, "busy-1b": (0.9,) * 12}
    out = dict(layout(models, (80 * GIB,) * 2, awake_profile=awake, activity_profile=active).servers)
    assert out["1b"] == out["32b"] != out["busy-1b"]
    blind = dict(layout(models, (80 * GIB,) * 2).servers)  # no profiles: it stays away
    assert blind["1b"] != blind["32b"]


def test_layout__decode_load_is_spread_when_nothing_else_differs() -> None:
    models = tuple(tiny(f"t{i}", 0.4) for i in range(4))
    out = dict(layout(models, (80 * GIB,) * 2).servers)
    assert sorted(out.values()).count((0,)) == 2


def test_awake_profile__a_model_stays_awake_its_idle_threshold_after_each_request() -> None:
    assert awake_profile([5.0, 12.0], idle_s=10.0, step_s=10.0, horizon_s=40.0) == (0.5, 1.0, 0.2, 0.0)
    assert awake_profile([], idle_s=10.0, step_s=10.0, horizon_s=20.0) == (0.0, 0.0)


def test_profiles__kappa_is_zero_for_models_that_take_turns_and_one_for_independent_ones() -> None:
    prof = Profiles(active={"a": (0.5, 0.0), "b": (0.0, 0.5), "c": (0.2, 0.2)})
    assert prof.kappa("a", "b") == 0.0 and prof.kappa("a", "c") == pytest.approx(1.0)
    assert prof.kappa("a", "a") == pytest.approx(2.0)  # on half the time: twice as likely when on
    with pytest.raises(ValueError, match="one length"):
        Profiles(awake={"a": (1.0,), "b": (1.0, 0.0)})


@pytest.mark.parametrize("seed", range(12))
def test_layout__scoring_one_blank_group_per_capacity_changes_nothing(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blank groups of the same capacities are scored once per server (packing._scored_blank):
    the layout equals the one that scores every candidate group."""
    import random

    from orchestrator.layout import packing

    rng = random.Random(seed)
    models = tuple(
        replace(
            m(
                f"m{i:02d}",
                rng.choice((2, 8, 16, 40, 70)),
                rng.choice((0.0, rng.expovariate(1 / 500))),
                rng.choice((1, 1, 2)),
            ),
            step_s=rng.choice((0.0, 0.03 * rng.random())),
            activity=rng.choice((None, rng.random())),
        )
        for i in range(rng.randrange(5, 40))
    )
    gpus = tuple(int(rng.choice((80, 80, 80, 40)) * GIB) for _ in range(rng.randrange(2, 17)))
    steps = 6
    kwargs = {
        "replicas": {x.name: 2 for x in models[::3]},
        "awake_profile": {x.name: [rng.random() for _ in range(steps)] for x in models[::2]},
        "activity_profile": {x.name: [rng.random() for _ in range(steps)] for x in models[1::2]},
    }
    got = layout(models, gpus, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(packing, "_scored_blank", lambda *a: False)
    want = layout(models, gpus, **kwargs)  # type: ignore[arg-type]
    assert got == want
    assert got.servers


@pytest.mark.parametrize("seed", range(6))
def test_gpu_plan_score__the_fits_at_its_peak_shortcut_scores_as_the_loop(seed: int) -> None:
    """``GpuPlan.score`` skips its per-step loop when the busiest step plus the model's largest
    awake share fits; an infinite ``awake_max`` forces the loop: the scores are equal."""
    import random

    from orchestrator.layout.colocation import GpuPlan

    rng = random.Random(seed)
    steps = 8
    prof = Profiles({f"x{i}": [rng.random() for _ in range(steps)] for i in range(30)})
    plan = GpuPlan(80.0 * GIB, prof)
    shortcuts = 0  # scores with no overflow
    for i in range(30):
        x = m(f"x{i}", rng.choice((2, 8, 16)), rng.expovariate(1 / 500))
        awake = [rng.random() * rng.choice((0.2, 1.0)) for _ in range(steps)]
        fast, slow = plan.score(x, awake, None), plan.score(x, awake, None, float("inf"))
        assert fast == slow
        shortcuts += fast.crowded == 0
        if plan.fits(x):
            plan.add(x, awake, sum(awake) / steps, None)
    assert 0 < shortcuts < 30  # the GPU filled up: some scores overflow, some fit
