"""Moore–Hodgson against a brute-force optimum on small random instances (hypothesis)."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.policy.admission.moore_hodgson import Job, completion_times, moore_hodgson

jobs_st = st.lists(
    st.tuples(st.integers(1, 20), st.integers(0, 60)),
    min_size=0,
    max_size=8,
).map(lambda xs: [Job(f"j{i}", float(p), float(d)) for i, (p, d) in enumerate(xs)])


def _feasible(subset: list[Job], start: float) -> bool:
    order = sorted(subset, key=lambda j: (j.d, j.key))  # EDF is optimal for a fixed set
    return all(c <= j.d for c, j in zip(completion_times(order, start), order, strict=True))


def _optimum(jobs: list[Job], start: float) -> int:
    for k in range(len(jobs), 0, -1):
        if any(_feasible(list(c), start) for c in combinations(jobs, k)):
            return k
    return 0


@settings(max_examples=300, deadline=None)
@given(jobs_st, st.integers(0, 10))
def test_moore_hodgson__keeps_as_many_on_time_jobs_as_the_optimum(jobs: list[Job], start: int) -> None:
    on_time, late = moore_hodgson(jobs, float(start))
    assert len(on_time) == _optimum(jobs, float(start))
    assert _feasible(on_time, float(start))
    assert sorted(j.key for j in on_time + late) == sorted(j.key for j in jobs)
    assert [j.d for j in on_time] == sorted(j.d for j in on_time)  # returned in run order


@settings(max_examples=200, deadline=None)
@given(jobs_st, st.lists(st.integers(0, 2), min_size=8, max_size=8))
def test_moore_hodgson__ranked_result_is_still_feasible(jobs: list[Job], ranks: list[int]) -> None:
    ranked = [Job(j.key, j.p, j.d, rank=r) for j, r in zip(jobs, ranks, strict=False)]
    on_time, late = moore_hodgson(ranked, 0.0)
    assert _feasible(on_time, 0.0)
    assert len(on_time) + len(late) == len(ranked)


def test_moore_hodgson__drops_the_lowest_rank_first() -> None:
    jobs = [Job("hi", 5, 6, rank=1), Job("lo", 2, 6, rank=0)]
    on_time, late = moore_hodgson(jobs, 0.0)
    assert [j.key for j in on_time] == ["hi"] and [j.key for j in late] == ["lo"]


def test_moore_hodgson__release_times_delay_the_start() -> None:
    jobs = [Job("a", 1, 3, ready=2.5), Job("b", 1, 10)]
    on_time, late = moore_hodgson(jobs, 0.0)
    assert [j.key for j in late] == ["a"] and [j.key for j in on_time] == ["b"]
