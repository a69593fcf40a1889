"""The chaos bench's tally of what every request got (bench/chaos/load.py): recovery, the
longest wait after a fault, and resets of a killed chimera's requests."""

from __future__ import annotations

import pytest

from bench.chaos.load import Outcome, Tally
from bench.chaos.report import table
from bench.chaos.scenarios import Result


def tally() -> Tally:
    return Tally(
        [
            Outcome(0.0, 0.3, "ok"),  # before the fault
            Outcome(0.9, 1.2, "reset"),  # in flight on the killed process
            Outcome(1.1, 1.9, "ok"),  # waited in the backlog: first answer after the fault
            Outcome(1.2, 4.4, "ok"),  # a SYN retry: the longest wait
            Outcome(2.0, 2.1, "ok"),
            Outcome(2.5, 2.6, "error", 503),
        ]
    )


def test_recovery_and_longest_wait_count_requests_sent_from_the_fault_on() -> None:
    t = tally()
    assert t.first_ok_after(1.0) == pytest.approx(0.9)
    assert t.longest_ok_after(1.0) == pytest.approx(3.2)
    assert t.longest_ok_after(3.0) is None  # nothing sent after 3 s was answered


def test_the_report_shows_both_and_the_killed_requests() -> None:
    t = tally()
    res = Result("chimera restart (kill -9)")
    res.take(t, 1.0, killed_at=1.0)
    assert res.counts["killed"] == 1 and res.counts["ok"] == 4
    assert (res.recovery_s, res.longest_wait_s) == pytest.approx((0.9, 3.2))
    text = table([res])
    assert "0.90 s" in text and "3.20 s" in text and "longest" in text
