"""The simulator's engines admitting and retracting as SGLang 0.5.17 does (bench/sim/sglang_kv.py,
applied by bench/sim/servers.py under ``kv="sglang"``): the admission rule with the new-token
ratio, the retraction order and the ratio it leaves, and a server that admits more than a full
reservation would, runs out of KV, retracts and re-prefills, and still finishes every request."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bench.sim import servers as srv
from bench.sim import sglang_kv as sk
from bench.sim.baselines import FixedColocation
from bench.sim.fleet import make_model
from bench.sim.servers import GpuExec, SimReq, SimServer
from bench.sim.simulator import Simulator
from bench.traces.request import BenchRequest
from orchestrator.perf import calibration as cal
from orchestrator.types import InstanceState


def test_running_requests_count_their_remaining_output_at_the_ratio() -> None:
    running = [sk.Seq(100, 400, 100)] * 4  # 300 tokens left each: 4 x 300 x 0.5 = 600 reserved
    new = sk.Seq(100, 400)  # needs 100 + 400 + 1, charges the same
    assert sk.admit(1102, running, [new], 0.5) == (1, False)
    assert sk.admit(1101, running, [new], 0.5) == (0, True)  # 501 >= 1101 - 600: not strictly less
    # at ratio 1 (a full reservation of the rest) the same pool takes none
    assert sk.admit(1102, running, [new], 1.0) == (0, True)


def test_admission_is_fcfs_and_stops_at_the_first_that_does_not_fit() -> None:
    big, small = sk.Seq(900, 100), sk.Seq(10, 10)
    assert sk.admit(1000, [], [small, big, small], 0.7) == (1, True)  # big blocks the small behind it
    assert sk.admit(5000, [], [small, big, small], 0.7) == (3, False)


def test_a_retracted_request_counts_its_generated_tokens_as_prompt_and_its_output_in_full() -> None:
    back = sk.Seq(100, 400, 300)  # extend 400, 100 left: the check needs 501, the charge is 501 + 300
    assert sk.admit(502, [], [back], 0.7) == (1, False)
    assert sk.admit(803, [], [back, sk.Seq(0, 1)], 0.7) == (1, True)  # 803 - 801 leaves 2: 0 + 1 + 1 >= 2


def test_retraction_takes_the_fewest_output_tokens_first_then_the_longest_prompt() -> None:
    running = [sk.Seq(100, 500, 50), sk.Seq(300, 500, 10), sk.Seq(100, 500, 10), sk.Seq(10, 500, 200)]
    assert sk.retract(4, running) == []  # a token for each: nothing to do
    assert sk.retract(3, running) == [1]  # one is always retracted; 310 freed covers the rest
    assert sk.retract(-400, running) == [1, 2]
    assert sk.retract(-10_000, running) == [1, 2, 0]  # the last one is always kept


def test_the_ratio_decays_per_step_to_its_floor_and_rises_after_a_retraction() -> None:
    assert sk.INIT_RATIO == 0.7 and sk.MIN_RATIO == pytest.approx(0.098)
    assert sk.decayed(0.7, 300) == pytest.approx(0.7 - (0.7 - 0.098) / 2)
    assert sk.decayed(0.7, 10_000) == pytest.approx(0.098)
    kept = [sk.Seq(100, 400, 200), sk.Seq(100, 400, 100)]
    assert sk.ratio_after_retract(kept) == pytest.approx((300 + 40) / 801)
    assert sk.ratio_after_retract([sk.Seq(1, 10, 9)]) == 1.0


def test_decode_steps_left_until_the_pool_is_full() -> None:
    assert sk.decode_steps_left(100, 10) == 10
    assert sk.decode_steps_left(9, 10) == 0
    assert sk.decode_steps_left(-5, 1) == math.inf  # a lone request is never retracted


def _server(limit: int) -> SimServer:
    m = replace(make_model("m", "llama-3.2-1b", calibration=cal.H200), kv="sglang")
    s = SimServer("m@0", m, (0,))
    s.state = InstanceState.AWAKE
    s.kv_limit = limit
    return s


def test_a_server_that_stopped_for_kv_admits_nothing_until_its_batch_shrinks() -> None:
    s = _server(2000)
    s.waiting = [SimReq(i, "m", 0.0, 100, 400) for i in range(5)]
    ex = GpuExec(0)
    ex.servers.append(s)
    ex.plan(0.0)
    assert len(s.running) == 3 and len(s.waiting) == 2 and s.full  # 3 x 501 charged, the 4th does not fit
    assert s.kv_used == 3 * 101  # what they hold: prompt + first token
    s.kv_limit = 100_000  # room now, but SGLang does not try again before a finish
    assert s.take_admitted() == []
    s.stepped(1, finished=True)
    assert len(s.take_admitted()) == 2


def _run(kv: str, calibration: cal.Calibration) -> tuple[Simulator, int]:
    m = replace(make_model("m", "llama-3.2-1b", calibration=calibration), kv=kv)
    pool = 3000 * m.cost.kv_bytes_per_token
    sim = Simulator({"m": m}, 1, 80 << 30, FixedColocation({"m": ((0,), pool)}))
    most = 0
    plan = GpuExec.plan

    def watch(ex: GpuExec, t: float) -> float | None:
        nonlocal most
        out = plan(ex, t)
        for s in ex.servers:
            most = max(most, len(s.running))
            assert s.ctx_sum() <= s.kv_limit or len(s.running) == 1  # never over the pool
        return out

    GpuExec.plan = watch  # type: ignore[method-assign]
    try:
        sim.run([BenchRequest(i, 0.02 * i, "m", 100, 400) for i in range(40)])
    finally:
        GpuExec.plan = plan  # type: ignore[method-assign]
    return sim, most


@pytest.mark.parametrize("calibration", [cal.H200, cal.H100], ids=["overlap", "time-slice"])
def test_sglang_admits_more_than_a_full_reservation_then_retracts_and_finishes_all(
    calibration: cal.Calibration,
) -> None:
    reserve, most_reserve = _run("reserve", calibration)
    sglang, most_sglang = _run("sglang", calibration)
    assert most_reserve == 3000 // 500
    assert most_sglang > most_reserve
    (s,) = sglang.servers.values()
    assert s.retractions > 0 and all(r.done == 0 for r in reserve.reqs)
    assert any(r.done > 0 for r in sglang.reqs)  # re-prefilled with the tokens they had
    for r in sglang.reqs:
        assert r.first <= r.finish and not math.isnan(r.finish)
    assert not s.running and not s.waiting and s.kv_used == 0
    assert s.ratio == sk.INIT_RATIO  # idle again: reset


def test_a_busy_servers_pages_drain_slowly_after_a_shrink_and_go_when_it_idles() -> None:
    """The shim's pages under load (servers.py ``drain``, ``mapped_tokens``): the cache filled
    the limit, the limit falls, the cache is evicted, but the pages above the limit come back
    with ``PINNED_DRAIN_TAU_S`` while requests run, and all at once when none does."""
    s = _server(20_000)
    r = SimReq(1, "m", 0.0, 100, 400)
    s.waiting = [r]
    ex = GpuExec(0)
    ex.servers.append(s)
    ex.plan(0.0)
    s.keep_cached(20_000)  # finished requests' tokens fill the rest of the limit
    assert s.mapped_tokens() == 20_000
    s.kv_limit = 5_000
    s.keep_cached()
    assert s.kv_used + s.kv_cached <= 5_000  # SGLang evicted down to the limit...
    assert s.mapped_tokens() == 20_000  # ...but its blocks still hold tokens
    s.drain(0.0)
    assert s.mapped_tokens() == 20_000  # no time passed
    s.drain(srv.PINNED_DRAIN_TAU_S)
    assert s.mapped_tokens() == pytest.approx(5_000 + 15_000 / math.e, abs=1)
    s.running, s.s0 = [], 0  # its last request ends
    s.sync_kv()
    assert s.mapped_tokens() == 5_000
