"""orchestrator/sglang/loads.py: the one reader of SGLang's /v1/loads body — summing the DP
ranks, and a scrape's sample (counter growth since the previous one)."""

from __future__ import annotations

import pytest

from orchestrator.sglang.loads import LoadsError, parse_loads, sample_from_loads
from tests.unit.sglang_fakes import loads

# a real SGLang 0.5.17 answer (load_snapshot.py field names), two DP ranks
TWO_RANKS = {
    "timestamp": "2026-11-25T10:00:00+00:00",
    "version": "0.5.17",
    "accelerator": "cuda",
    "num_accelerators": 2,
    "loads": [
        {
            "dp_rank": 0,
            "num_running_reqs": 3,
            "num_waiting_reqs": 2,
            "num_waiting_uncached_tokens": 900,
            "num_used_tokens": 5000,
            "max_total_num_tokens": 10000,
            "gen_throughput": 120.5,
            "token_usage": 0.5,
        },
        {
            "dp_rank": 1,
            "num_running_reqs": 1,
            "num_waiting_reqs": 0,
            "num_waiting_uncached_tokens": 0,
            "num_used_tokens": 100,
            "max_total_num_tokens": 10000,
            "gen_throughput": 30,
        },
    ],
}
NOT_SGLANGS = (
    [],
    {"loads": 3},
    {"loads": "nope"},
    {"loads": [1]},
    {"loads": [{"num_running_reqs": "x"}]},
    {"loads": [{"num_used_tokens": True}]},
)


def test_parse_loads_sums_ranks() -> None:
    load = parse_loads(TWO_RANKS)
    assert (load.running, load.waiting, load.waiting_tokens, load.used_tokens) == (4, 2, 900, 5100)
    assert load.capacity_tokens == 20000 and load.token_rate == pytest.approx(150.5)
    assert not load.idle and parse_loads({"loads": []}).idle


@pytest.mark.parametrize("bad", NOT_SGLANGS)
def test_a_body_that_is_not_sglangs_is_a_loads_error(bad: object) -> None:
    with pytest.raises(LoadsError):
        parse_loads(bad)
    with pytest.raises(LoadsError):
        sample_from_loads("a@gpu0", bad, 0.0, None)


def test_sample_carries_the_summed_load() -> None:
    s, _ = sample_from_loads("a@gpu0", TWO_RANKS, 3.0, None)
    load = parse_loads(TWO_RANKS)
    assert (s.instance_id, s.at, s.running, s.waiting, s.waiting_tokens) == (
        "a@gpu0",
        3.0,
        load.running,
        load.waiting,
        load.waiting_tokens,
    )
    assert (s.used_tokens, s.capacity_tokens) == (load.used_tokens, load.capacity_tokens)
    assert s.gen_rate == load.token_rate and s.idle == load.idle
    assert s.max_running is None  # this server does not report max_running_requests


def test_sample__first_is_a_baseline_then_counter_growth_is_demand() -> None:
    first, seen = sample_from_loads("a@gpu0", loads(1_000, 500.0), 10.0, None)
    assert first.tokens == 0  # history (the readiness probe included) is not demand now
    assert (first.running, first.waiting, first.waiting_tokens) == (2, 1, 40)
    assert (first.used_tokens, first.capacity_tokens, first.max_running) == (900, 10_000, 48)
    second, seen = sample_from_loads("a@gpu0", loads(1_300, 560.0), 10.25, seen)
    assert second.tokens == 300 + 60
    restarted, _ = sample_from_loads("a@gpu0", loads(20, 5.0), 10.5, seen)
    assert restarted.tokens == 25  # counters went down: they count from zero


def test_sample__without_decode_counters_uses_gen_throughput() -> None:
    _, seen = sample_from_loads("a@gpu0", loads(0, None), 1.0, None)
    s, _ = sample_from_loads("a@gpu0", loads(0, None, gen_rate=80.0), 1.5, seen)
    assert s.tokens == pytest.approx(40.0)
