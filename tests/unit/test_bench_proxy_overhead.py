"""bench.live.proxy_overhead's arithmetic: a level over its repeats (medians of the runs nobody
disturbed) and whether the target was met. The measurement itself runs by hand (it is a
benchmark, docs/bench-live.md)."""

from __future__ import annotations

from typing import Any

from bench.live.proxy_overhead import DISTURBED_OTHER_PCT, _met, combine


def run(p50_ms: float, p99_ms: float, other: float, saturated: bool = False) -> dict[str, Any]:
    return {
        "streams": 64,
        "added_ttft_p50_s": p50_ms / 1000,
        "added_ttft_p99_s": p99_ms / 1000,
        "throughput_ratio": 0.8,
        "cpu_percent": {"client": 70.0, "proxy": 40.0, "engine": 50.0, "other": other},
        "cpu_saturated": saturated,
        "paths": {"direct": {}, "proxy": {}},
    }


def test_medians_leave_out_disturbed_runs() -> None:
    runs = [run(30, 50, 0), run(90, 400, DISTURBED_OTHER_PCT + 1), run(34, 40, 2), run(32, 60, 1)]
    lv = combine(runs)
    assert lv["added_ttft_p50_s"] == 0.032 and lv["added_ttft_p99_s"] == 0.05
    assert lv["repeats"] == 4 and lv["disturbed"] == 1 and lv["runs"] == runs
    assert lv["cpu_percent"] == runs[3]["cpu_percent"]  # the run closest to the median stands


def test_all_disturbed_still_gives_medians() -> None:
    lv = combine([run(30, 50, 90), run(40, 70, 95)])
    assert lv["disturbed"] == 2 and lv["added_ttft_p50_s"] == 0.035


def test_target() -> None:
    assert _met(combine([run(0.8, 2.5, 0)])) is True
    assert _met(combine([run(1.2, 2.5, 0)])) is False
    assert _met(combine([run(0.8, 2.5, 0, saturated=True)])) is None
    assert _met(None) is None
