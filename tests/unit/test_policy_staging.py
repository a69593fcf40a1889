from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.policy.staging import MIN_STAGED_S, STICKY, Checkpoint, StagingPlan, decide

GB = 10**9


def ck(path: str, gb: float, pop: float, held: bool = False) -> Checkpoint:
    return Checkpoint(path, int(gb * GB), pop, held)


def test_the_most_popular_unheld_checkpoints_fill_the_budget() -> None:
    cks = [ck("a", 16, 5.0), ck("b", 16, 9.0), ck("c", 16, 1.0), ck("d", 16, 20.0, held=True)]
    plan = decide(cks, frozenset(), 40 * GB, 0.0)
    # b and a first (no server holds them); d, the most popular, is on a GPU: after them
    assert plan == StagingPlan(stage=("b", "a"), drop=(), wanted=("b", "a"))


def test_held_checkpoints_take_what_is_left_and_smaller_ones_fill_gaps() -> None:
    cks = [ck("a", 16, 5.0), ck("big", 30, 4.0), ck("small", 2, 0.5), ck("h", 10, 9.0, held=True)]
    plan = decide(cks, frozenset(), 30 * GB, 0.0)
    assert plan.wanted == ("a", "small", "h")  # big does not fit beside a


def test_a_staged_checkpoint_is_kept_against_a_slightly_more_popular_one() -> None:
    cks = [ck("old", 16, 1.0), ck("new", 16, 1.0 * STICKY * 0.99)]
    assert decide(cks, frozenset({"old"}), 16 * GB, 0.0) == StagingPlan(wanted=("old",))
    cks = [ck("old", 16, 1.0), ck("new", 16, 1.0 * STICKY * 1.01)]
    assert decide(cks, frozenset({"old"}), 16 * GB, 0.0) == StagingPlan(("new",), ("old",), ("new",))


def test_never_asked_unknown_size_and_no_budget() -> None:
    cks = [ck("cold", 1, 0.0), ck("hub-name", 0, 3.0)]
    assert decide(cks, frozenset(), 100 * GB, 0.0) == StagingPlan()
    assert decide([ck("a", 1, 1.0)], frozenset({"a", "gone"}), 0, 0.0) == StagingPlan(drop=("a", "gone"))


@given(
    st.lists(st.tuples(st.integers(0, 40), st.floats(0, 100), st.booleans()), max_size=12),
    st.integers(0, 120),
    st.sets(st.integers(0, 11)),
)
def test_the_plan_fits_the_budget_and_ends_where_it_says(
    specs: list[tuple[int, float, bool]], budget_gb: int, staged_idx: set[int]
) -> None:
    cks = [ck(f"p{i}", gb, pop, held) for i, (gb, pop, held) in enumerate(specs)]
    staged = frozenset(f"p{i}" for i in staged_idx if i < len(cks))
    plan = decide(cks, staged, budget_gb * GB, 0.0)
    size = {c.path: c.size_bytes for c in cks}
    assert sum(size[p] for p in plan.wanted) <= budget_gb * GB
    assert (staged - set(plan.drop)) | set(plan.stage) == set(plan.wanted)
    assert not set(plan.stage) & staged and set(plan.drop) <= staged


def test_a_checkpoint_staged_less_than_a_minute_ago_keeps_its_place() -> None:
    young = Checkpoint("old", 16 * GB, 1.0, held=True, staged_at=100.0)  # held and far less popular
    cks = [young, ck("new", 16, 10.0)]
    assert decide(cks, frozenset({"old"}), 16 * GB, 100.0 + MIN_STAGED_S - 1) == StagingPlan(wanted=("old",))
    plan = decide(cks, frozenset({"old"}), 16 * GB, 100.0 + MIN_STAGED_S)
    assert plan == StagingPlan(("new",), ("old",), ("new",))  # a minute on, the ranking decides again
    gone = Checkpoint("old", 16 * GB, 0.0, held=False, staged_at=100.0)  # nobody asks for it any more
    assert decide([gone, ck("new", 16, 1.0)], frozenset({"old"}), 16 * GB, 101.0).drop == ("old",)
