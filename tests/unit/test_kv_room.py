"""The KV ledger's room for a wake (orchestrator/kv/room.py, ``Ledger.room``): a parked server's
weights fit only beside what its neighbours really hold (max(mapped, limit) of a resident one,
the pages of a parked one), and a wake that is due makes the ledger shrink and flush them."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.kv.ledger import MARGIN_BYTES, FlushCache, Ledger, Observation, SetLimit
from orchestrator.kv.room import Hold, room
from tests.unit.test_kv_ledger import AWAKE, BLOCK, GIB, PARKED, busy, idle, inst, observed, status

CAP = 80 * GIB


def test_room_is_capacity_less_margin_own_and_others_holdings() -> None:
    got = room(
        "t", {0: CAP}, MARGIN_BYTES, {0: 18 * GIB}, {0: 2 * GIB}, {0: (Hold("a", 30 * GIB), Hold("b", 40 * GIB))}
    )
    assert got.free == {0: CAP - MARGIN_BYTES - 2 * GIB - 70 * GIB}  # 7 GiB
    assert got.short == {0: 11 * GIB} and got.short_bytes == 11 * GIB
    assert [h.instance for h in got.holders[0]] == ["b", "a"]  # largest first, for the log
    text = got.describe()
    assert text.startswith("11.0 GiB on GPU 0 (18.0 GiB needed, 7.0 GiB free; neighbours hold b 40.0 GiB, a 30.0")
    fits = room("t", {0: CAP}, MARGIN_BYTES, {0: 7 * GIB}, {0: 2 * GIB}, {0: (Hold("a", 70 * GIB),)})
    assert fits.short == {} and fits.short_bytes == 0


def test_a_wake_waits_for_the_neighbours_pages_not_their_limits() -> None:
    """The neighbour's idle fill mapped its whole limit: the wake is short until the ledger,
    counting the due wake's weights, shrinks it and its pages are unmapped."""
    led = Ledger({0: CAP})
    a = inst("a")
    t = inst("t", resident=False)
    led.accepted("t", 0, 1)
    seen = {"a": observed(idle(), status(BLOCK, BLOCK)), "t": Observation(None, status(BLOCK, 0))}
    (grow,) = led.plan([a, t], seen, now=0.0)  # t parked: a alone gets the whole budget
    assert isinstance(grow, SetLimit) and grow.bytes == (CAP - AWAKE - PARKED - BLOCK - MARGIN_BYTES) // BLOCK * BLOCK
    led.accepted("a", grow.bytes, grow.revision)
    seen["a"] = observed(idle(), status(grow.bytes, grow.bytes, revision=grow.revision))  # the idle fill
    assert led.plan([a, t], seen, now=0.5) == []
    r = led.room("t")
    assert r is not None
    # a holds its weights + its whole limit of pages, t its context and a block; t needs 18 more
    free = CAP - MARGIN_BYTES - (AWAKE + grow.bytes) - (PARKED + BLOCK)
    assert r.need == {0: AWAKE - PARKED} and r.free == {0: free} and free < BLOCK
    assert r.short_bytes == AWAKE - PARKED - free > 0
    assert f"neighbours hold a {(AWAKE + grow.bytes) / GIB:.1f} GiB" in r.describe()

    # the wake is due: its weights count, so a's limit shrinks at once
    due = replace(t, holds_weights=True, wake_due=True)
    # and, idle with its pages above the limit it gets now, it is asked to flush in that round
    shrink, flush = led.plan([a, due], seen, now=1.0)
    assert isinstance(shrink, SetLimit) and shrink.bytes <= CAP - MARGIN_BYTES - 2 * AWAKE - BLOCK
    assert flush == FlushCache("a")
    assert led.waking == {"t"}  # the runner plans again after one scrape round
    led.accepted("a", shrink.bytes, shrink.revision)
    after = led.room("t")
    assert after is not None and after.short_bytes > 0  # its pages are still mapped
    # the flush has not landed yet: a second one only a second after the first
    seen["a"] = observed(idle(), status(grow.bytes, shrink.bytes, revision=shrink.revision))
    assert led.plan([a, due], seen, now=1.25) == []
    assert led.plan([a, due], seen, now=2.0) == [FlushCache("a")]
    still = led.room("t")
    assert still is not None and still.short_bytes > 0
    # flushed: the shim unmapped what lies above the new limit, and the weights fit
    seen["a"] = observed(idle(), status(shrink.bytes, shrink.bytes, revision=shrink.revision))
    led.plan([a, due], seen, now=2.5)
    fits = led.room("t")
    assert fits is not None and fits.short_bytes == 0


def test_a_busy_neighbour_counts_its_pages_above_its_limit() -> None:
    led = Ledger({0: CAP})
    led.accepted("a", 10 * GIB, 1)
    seen = {"a": observed(busy(300_000), status(45 * GIB, 10 * GIB, used=300_000)), "t": Observation(None, None)}
    led.plan([inst("a"), inst("t", resident=False, holds_weights=True, wake_due=True)], seen, now=0.0)
    r = led.room("t")
    assert r is not None and r.holders[0] == (Hold("a", AWAKE + 45 * GIB),)


def test_two_due_wakes_on_one_gpu_go_one_after_the_other() -> None:
    """Room for one only: the first by id sees it, the other counts the first's weights."""
    led = Ledger({0: CAP})
    a = inst("a")
    led.accepted("a", 10 * GIB, 1)
    t1 = inst("t1", resident=False, holds_weights=True, wake_due=True)
    t2 = inst("t2", resident=False, holds_weights=True, wake_due=True)
    seen = {"a": observed(idle(), status(10 * GIB, 10 * GIB))}
    led.plan([a, t1, t2], seen, now=0.0)
    first, second = led.room("t1"), led.room("t2")
    assert first is not None and second is not None
    # free for t1: 80 - 1 - (20 + 10) - 2 (t2 parked) - 2 (own) = 45; for t2 also t1's 20 awake
    assert first.short_bytes == 0 and second.free[0] == first.free[0] - (AWAKE - PARKED)


def test_room_unknown_before_the_ledger_saw_the_instance() -> None:
    assert Ledger({0: CAP}).room("t") is None


def test_hysteresis_never_keeps_a_gpu_over_its_budget() -> None:
    """A budget drop smaller than the hysteresis (5 % of a large limit) is still sent when the
    limits in force no longer fit: a wake waiting for room would wait for it for good."""
    led = Ledger({0: CAP})
    a = inst("a")
    budget = CAP - AWAKE - MARGIN_BYTES
    led.accepted("a", budget, 1)
    seen = {"a": observed(idle(), status(budget, budget))}
    assert led.plan([a], seen, now=0.0) == []
    bigger = replace(a, awake_bytes=AWAKE + GIB)  # measured more than the model said: 1 GiB less
    acts = led.plan([bigger], seen, now=1.0)
    assert [x.bytes for x in acts if isinstance(x, SetLimit)] == [budget - GIB]


def test_an_idle_neighbour_is_flushed_again_sooner_while_a_wake_waits_on_its_gpu() -> None:
    """At most one flush every 10 s per instance; while a wake on its GPU waits for its pages,
    one every second."""
    led = Ledger({0: CAP})
    led.accepted("a", 10 * GIB, 1)
    seen = {"a": observed(idle(), status(20 * GIB, 10 * GIB, revision=1)), "t": Observation(None, None)}
    parked, due = inst("t", resident=False), inst("t", resident=False, holds_weights=True, wake_due=True)
    assert FlushCache("a") in led.plan([inst("a"), parked], seen, now=0.0)
    assert FlushCache("a") not in led.plan([inst("a"), parked], seen, now=2.0)  # 10 s apart
    assert FlushCache("a") in led.plan([inst("a"), due], seen, now=2.5)  # a wake waits: 1 s apart
    assert FlushCache("a") not in led.plan([inst("a"), due], seen, now=3.0)
    assert FlushCache("a") in led.plan([inst("a"), due], seen, now=3.5)
    assert FlushCache("a") not in led.plan([inst("a"), parked], seen, now=5.0)  # no wake: 10 s again
