"""The map-ahead worker's idle fill (cumem_shim.mapahead) over the fake device, on a clock the
test moves: nothing past map-ahead while allocations come, the whole limit once none has come
for ``idle_fill_s``, no further block once one comes again, no more than a lowered limit, and
the map trace names every block the pool mapped. No test sleeps: the worker is awaited with
``settle`` (bounded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumem_shim import maptrace
from cumem_shim.elastic import ElasticKV
from cumem_shim.fake import FakeDevice
from cumem_shim.freelist import SlotFreeList
from tests.unit.test_shim_map_ahead import BLOCK, LAYOUT, UNITS, WAIT_S


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(limit_blocks: int, fill_s: float, trace: maptrace.MapTrace | None = None) -> tuple[ElasticKV, Clock]:
    clock = Clock()
    kv = ElasticKV(
        LAYOUT,
        FakeDevice(strict_context=True),
        0,
        limit_blocks * BLOCK,
        slack_tokens=256,
        map_ahead_blocks=2,
        idle_fill_s=fill_s,
        trace=trace,
        clock=clock,
    )
    kv.attach(SlotFreeList(LAYOUT))
    return kv, clock


def poke(kv: ElasticKV) -> None:
    """Let the worker look again now (it sleeps on the real clock until a fill is due)."""
    with kv._cond:
        kv._cond.notify_all()


def idle(kv: ElasticKV, clock: Clock, seconds: float) -> None:
    """No allocation for ``seconds``: move the clock, let the worker look and wait for it."""
    clock.t += seconds
    poke(kv)
    assert kv.settle(WAIT_S)


def held(kv: ElasticKV) -> int:
    return len(kv.mapped) + len(kv._worker.prepared)


def test_an_idle_pool_is_filled_to_its_limit_and_an_allocation_stops_the_fill() -> None:
    kv, clock = make(10, fill_s=0.5)
    kv.ensure(0)  # the first allocation arms the worker
    assert kv.settle(WAIT_S) and held(kv) == 3  # block 0 and map-ahead's two
    idle(kv, clock, 0.4)  # not idle long enough
    assert held(kv) == 3
    idle(kv, clock, 0.2)
    assert held(kv) == 10  # the limit: not one block more
    assert kv.status().mapped_bytes == 10 * BLOCK
    kv.ensure(5 * UNITS)  # allocations take the filled blocks with no driver call here
    assert len(kv.mapped) >= 6 and kv.stats.inline_blocks == 0
    kv.close()


def test_while_allocations_come_the_worker_keeps_to_map_ahead() -> None:
    kv, clock = make(10, fill_s=0.5)
    kv.ensure(0)
    for _ in range(5):
        clock.t += 0.3
        kv.ensure(0)  # an allocation every 0.3 s: never idle for 0.5 s
        poke(kv)
        assert kv.settle(WAIT_S) and held(kv) == 3
    kv.close()


def test_a_lower_limit_gives_filled_blocks_back() -> None:
    kv, clock = make(10, fill_s=0.5)
    kv.ensure(0)
    idle(kv, clock, 1.0)
    assert held(kv) == 10
    kv.set_limit(4 * BLOCK, 1)
    kv.available()  # the scheduler applies it
    assert kv.settle(WAIT_S) and held(kv) == 4 and kv.status().mapped_bytes == 4 * BLOCK
    kv.close()


def test_without_idle_fill_an_idle_pool_stays_at_map_ahead() -> None:
    kv, clock = make(10, fill_s=0.0)
    kv.ensure(0)
    idle(kv, clock, 3600.0)
    assert held(kv) == 3
    assert kv._worker._until_fill() is None  # and the worker sleeps until woken
    kv.close()


def test_idle_fill_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="idle_fill_s"):
        make(4, fill_s=-1.0)


def test_the_map_trace_has_a_line_per_block_mapped_and_unmapped(tmp_path: Path) -> None:
    path = tmp_path / "maps.txt"
    kv, clock = make(6, fill_s=0.5, trace=maptrace.MapTrace(str(path)))
    kv.ensure(0)
    idle(kv, clock, 1.0)
    kv.close()
    rows = maptrace.read(path)
    made = sorted(b for what, b, _, _ in rows if what in ("inline", "prepare"))
    gone = sorted(b for what, b, _, _ in rows if what in ("discard", "unmap"))
    assert made == list(range(6)) and gone == list(range(6))  # block 0 at start, 1-5 by the worker
    assert all(start <= end for _, _, start, end in rows)
    assert {what for what, b, _, _ in rows if b > 0} >= {"prepare"}


def test_a_torn_trace_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "maps.txt"
    path.write_text("prepare 3 1.0 2.0\nprepare 4 1.5\nbogus 1 1 1\nunmap 3 4.0 4.5\n")
    assert maptrace.read(path) == [("prepare", 3, 1.0, 2.0), ("unmap", 3, 4.0, 4.5)]


def test_an_unwritable_trace_turns_tracing_off(tmp_path: Path) -> None:
    t = maptrace.MapTrace(str(tmp_path / "no" / "such" / "dir" / "maps.txt"))
    t.record("prepare", 1, 0.0, 1.0)  # no error into the pool


def test_overhead_bench_splits_requests_by_whether_a_map_ran_beside_their_first_token() -> None:
    from bench.client.record import RequestRecord
    from bench.shim.overhead import beside_maps, block_order

    def rec(i: int, sent: float, ttft: float) -> RequestRecord:
        return RequestRecord(i, "m", "/v1/completions", sent, sent, 200, True, ttft_s=ttft, run=3)

    shim = [rec(0, 0.0, 0.05), rec(1, 1.0, 0.04), rec(2, 2.0, 0.03)]
    base = [rec(0, 0.0, 0.025), rec(1, 1.0, 0.04), rec(2, 2.0, 0.03)]
    starts = {("shim", 3): 100.0}
    trace = [("prepare", 7, 100.01, 100.02)]  # inside request 0's wait only
    out = beside_maps(shim, base, starts, "shim", trace)
    assert out["overlapped"]["requests"] == 1 and out["clear"]["requests"] == 2
    assert out["overlapped"]["ratio_over_static_p50"] == 2.0
    assert out["clear"]["ratio_over_static_p50"] == 1.0
    assert beside_maps(shim, base, starts, "shim", [])["overlapped"]["requests"] == 0
    # every server takes every place once over len(kinds) blocks
    kinds = ("static", "shim", "shim-fill")
    firsts = [block_order(kinds, r, b, 2)[0] for r in range(3) for b in range(2)]
    assert sorted(firsts) == sorted(kinds * 2)


def test_overhead_bench_pairs_each_request_with_its_twin_on_the_fixed_pool() -> None:
    from bench.client.record import RequestRecord
    from bench.shim.overhead import paired

    def rec(i: int, run: int, ttft: float, tpot: float, ok: bool = True) -> RequestRecord:
        return RequestRecord(i, "m", "/v1/completions", 0.0, 0.0, 200, ok, ttft_s=ttft, tpot_s=tpot, run=run)

    base = [rec(0, 0, 0.10, 0.010), rec(1, 0, 0.20, 0.010), rec(2, 0, 0.40, 0.010), rec(0, 1, 0.10, 0.010)]
    shim = [
        rec(0, 0, 0.11, 0.011),  # 1.1x its twin
        rec(1, 0, 0.20, 0.010),  # 1.0x
        rec(2, 0, 0.48, 0.012),  # 1.2x
        rec(0, 1, 9.00, 0.500, ok=False),  # failed: no pair
        rec(5, 0, 0.10, 0.010),  # no twin (another id)
    ]
    out = paired(shim, base)
    assert out == {"pairs": 3, "ttft_p50": 1.1, "tpot_p50": 1.1}
    # the slowest requests of one side alone move a percentile ratio, not the paired median
    assert paired(base, base) == {"pairs": 4, "ttft_p50": 1.0, "tpot_p50": 1.0}
    assert paired([], base) == {"pairs": 0, "ttft_p50": None, "tpot_p50": None}
