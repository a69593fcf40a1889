"""Decode interference (orchestrator/layout/interference.py): the law of the neighbours' decode
work against brute-force enumeration, inflation by sharing, and what it means for a small model
next to rare or busy slow neighbours."""

from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.layout.interference import LAW_BINS, Member, inflated, law_of, miss, miss_probs


def brute_force_miss(me: Member, neighbours: list[tuple[Member, float]]) -> float:
    """P(sum of active neighbours' steps >= my margin), over every subset."""
    total = 0.0
    for on in itertools.product((0, 1), repeat=len(neighbours)):
        p = 1.0
        work = 0.0
        for bit, (n, a) in zip(on, neighbours, strict=True):
            p *= a if bit else 1 - a
            work += n.step_s * bit
        if work >= me.margin_s - 1e-12:
            total += p
    return total


def test_interference__law_matches_brute_force_on_random_instances() -> None:
    rng = random.Random(4)
    for _ in range(40):
        width = 0.0005  # steps on the bin grid: the law is then exact
        me = Member("me", step_s=2 * width, activity=0.5, tpot_slo_s=(LAW_BINS + 2) * width)
        neighbours = [
            (Member(f"n{i}", rng.randrange(1, 40) * width, 0.0, 1.0), rng.random()) for i in range(rng.randrange(1, 9))
        ]
        assert miss(me, law_of(me, neighbours)) == pytest.approx(brute_force_miss(me, neighbours), abs=1e-9)


def test_interference__sharing_inflates_activity_and_nothing_decodes_without_traffic() -> None:
    alone = [Member("a", 0.002, 0.2, 0.02)]
    crowd = alone + [Member(f"b{i}", 0.007, 0.6, 0.07) for i in range(3)]
    assert inflated(alone)[0] == pytest.approx(0.2)
    assert inflated(crowd)[0] > 0.5  # its requests last ~(2 + 12.6) / 2 times longer
    assert miss_probs([Member("idle", 0.0, 0.0, 0.02), Member("x", 0.003, 0.5, 0.02)]) == [0.0, 0.0]


def test_interference__rare_neighbours_barely_count_busy_slow_ones_break_the_slo() -> None:
    tiny = Member("1b", 0.0017, 0.2, 0.018)
    rare = [Member(f"r{i}", 0.0032, 0.01, 0.034) for i in range(8)]  # 8 x 3.2 ms > 16.3 ms margin
    assert miss_probs([tiny, *rare])[0] < 1e-6  # the worst case (all at once) would always miss
    busy_slow = Member("32b", 0.025, 0.5, 0.3)
    assert miss_probs([tiny, busy_slow])[0] > 0.5
    apart = miss_probs([tiny, busy_slow], kappa=lambda i, j: 0.0)  # they take turns
    assert apart[0] == 0.0
