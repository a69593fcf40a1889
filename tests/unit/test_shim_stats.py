"""The shim's map-ahead counts: what an allocation adopted, mapped itself or waited for shows in
``status().maps`` (and so over the channel), and the server log gets a summary when the counts
move, at most every LOG_EVERY_S."""

from __future__ import annotations

import pytest

from cumem_shim import stats as stats_mod
from cumem_shim.errors import ProtocolError
from cumem_shim.protocol import status_from_json, status_json
from cumem_shim.stats import MapStats
from tests.unit.test_shim_map_ahead import UNITS, WAIT_S, arm, make


def test_without_map_ahead_every_grow_is_mapped_inside_the_allocation() -> None:
    kv, _, _ = make(6, ahead=0)
    kv.ensure(3 * UNITS - 1)  # blocks 1 and 2, mapped on this thread
    counts = kv.status().maps
    assert (counts.prepared, counts.adopted, counts.inline_blocks, counts.ensures) == (0, 0, 2, 1)
    assert counts.inline_s > 0 and counts.waits == 0
    kv.close()


def test_with_map_ahead_a_grow_adopts_and_maps_nothing_itself() -> None:
    kv, _, _ = make(6, ahead=2)
    arm(kv)
    kv.ensure(3 * UNITS - 1)
    counts = kv.status().maps
    assert counts.adopted == 2 and counts.inline_blocks == 0 and counts.inline_s == 0.0
    assert kv.settle(WAIT_S)
    kv.publish()  # status() answers the snapshot the allocator hook refreshes
    assert kv.status().maps.prepared == 4  # two adopted, two more prepared behind them
    kv.close()


def test_counts_cross_the_channel_and_a_bad_body_is_a_protocol_error() -> None:
    kv, _, _ = make(6, ahead=0)
    kv.ensure(2 * UNITS - 1)
    st = kv.status()
    assert status_from_json(status_json(st)) == st
    body = status_json(st)
    body["maps"] = ["not", "counts"]
    with pytest.raises(ProtocolError, match="maps"):
        status_from_json(body)
    kv.close()


def test_the_log_line_comes_on_change_and_at_most_every_period() -> None:
    s = MapStats()
    assert s.log_line(0.0) is not None  # the first look: all zeros, said once
    assert s.log_line(1.0) is None  # nothing moved
    s.grew(1, 0.002, 0, 0.0)
    assert s.log_line(2.0) is None  # moved, but the last line is too recent
    line = s.log_line(stats_mod.LOG_EVERY_S + 0.5)
    assert line is not None and "1 mapped on the scheduler thread (2.0 ms)" in line
