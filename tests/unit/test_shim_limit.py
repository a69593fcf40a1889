"""cumem_shim.limit: revisioned limits across threads, and the drain rule for shrinks."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cumem_shim.limit import LimitBox, drain


def test_stale_revisions_are_ignored() -> None:
    box = LimitBox(100)
    assert box.take() == (100, 0)  # the start-up limit is applied once
    assert box.take() is None
    assert box.post(200, 2).applied
    assert not box.post(50, 2).applied  # same revision: stale
    assert not box.post(50, 1).applied
    assert box.current() == (200, 2)
    assert box.take() == (200, 2) and box.take() is None
    with pytest.raises(ValueError):
        box.post(-1, 3)


def test_concurrent_posts_keep_the_newest_revision() -> None:
    box = LimitBox(0)

    def post(start: int) -> None:
        for r in range(start, 2000, 4):
            box.post(r * 10, r)

    threads = [threading.Thread(target=post, args=(s,)) for s in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert box.current() == (19990, 1999)


def test_drain_gives_running_requests_slack_then_ratchets_down() -> None:
    # limit cut to 100 units while 500 are in use
    d = drain(100, 500, None, 50, headroom=8)
    assert d == (550, 550)
    d = drain(100, 520, d.floor, 50, headroom=8)  # running requests grew: the ratchet does not
    assert d.effective == 550
    d = drain(100, 548, d.floor, 50, headroom=8)  # the slack is spent: headroom stays
    assert d.effective == 556
    d = drain(100, 300, d.floor, 50, headroom=8)  # requests finished
    assert d == (350, 350)
    d = drain(100, 90, d.floor, 50, headroom=8)  # back under the limit: done
    assert d == (100, None)


@given(
    st.integers(0, 10_000),
    st.lists(st.integers(0, 20_000), min_size=1, max_size=30),
    st.integers(0, 4096),
    st.integers(1, 256),
)
def test_drain_properties(target: int, used_seq: list[int], slack: int, headroom: int) -> None:
    floor: int | None = None
    last = None
    for used in used_seq:
        eff, floor = drain(target, used, floor, slack, headroom)
        assert eff >= target
        if used <= target:
            assert (eff, floor) == (target, None)
            last = None
            continue
        assert floor is not None and eff >= used + headroom  # never starve running requests
        if last is not None:
            assert floor <= last  # the ratchet only falls while draining
        last = floor
