"""The sim's continuous batching loop, driven on a virtual clock (no wall-time sleeps)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from orchestrator.perf.model import LatencyModel, MemoryPlan, plan_memory
from orchestrator.shapes import load_shape
from simsglang.batcher import Batcher, SimRequest, StepEvent, VirtualClock
from simsglang.tokenizer import OutputPlan

SHAPE = load_shape("llama-3.1-8b")


def small_plan(capacity: int = 100, max_running: int = 64, chunk: int = 8192) -> MemoryPlan:
    return replace(
        plan_memory(SHAPE), kv_capacity_tokens=capacity, max_running_requests=max_running, chunked_prefill_size=chunk
    )


def request(rid: str, prompt: int, out: int) -> SimRequest:
    plan = OutputPlan(seed=zlib.crc32(rid.encode()), length=out, finish="length")
    return SimRequest(rid, prompt, plan)


async def drain(req: SimRequest) -> list[StepEvent]:
    events = []
    while True:
        ev = await asyncio.wait_for(req.events.get(), 5)
        events.append(ev)
        if ev.finish:
            return events


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
async def clock() -> VirtualClock:
    return VirtualClock()


async def running(batcher: Batcher) -> AsyncIterator[Batcher]:
    task = asyncio.create_task(batcher.run())
    try:
        yield batcher
    finally:
        batcher.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
async def batcher(clock: VirtualClock) -> AsyncIterator[Batcher]:
    async for b in running(Batcher(LatencyModel(SHAPE), small_plan(), clock)):
        yield b


async def test_one_request_takes_one_prefill_plus_decode_steps(batcher: Batcher, clock: VirtualClock) -> None:
    start = clock.now()
    req = request("a", prompt=10, out=4)
    batcher.submit(req)
    events = await drain(req)
    assert [e.generated for e in events] == [1, 2, 3, 4]
    assert events[-1].finish == {"type": "length", "length": 4}
    m = batcher.model
    expected = m.prefill_time([(10, 0)]) + sum(m.decode_time([10 + k]) for k in (1, 2, 3))
    assert events[-1].time - start == pytest.approx(expected)
    assert events[0].time - start == pytest.approx(m.prefill_time([(10, 0)]))  # TTFT
    assert batcher.is_idle() and batcher.snapshot().used_tokens == 0


async def test_admission_respects_kv_capacity_and_queues_the_rest() -> None:
    clock = VirtualClock(auto=False)
    async for batcher in running(Batcher(LatencyModel(SHAPE), small_plan(), clock)):
        reqs = [request(f"r{i}", prompt=30, out=10) for i in range(3)]  # 40 tokens each of 100
        for r in reqs:
            batcher.submit(r)
        await settle()  # the first prefill is in flight: 2 admitted, 1 waits
        snap = batcher.snapshot()
        assert (snap.num_running, snap.num_waiting) == (2, 1)
        assert reqs[2].state == "waiting" and snap.waiting_tokens == 30
        assert snap.used_tokens == 60 <= snap.capacity
        for _ in range(10_000):
            if reqs[0].state == "done":
                break
            clock.advance(0.01)
            await settle()
        assert reqs[2] in batcher.running  # admitted once KV was freed
        clock.auto = True
        clock.advance(1.0)
        assert (await drain(reqs[2]))[-1].generated == 10
        assert batcher.is_idle()


async def test_max_running_requests_caps_the_batch(clock: VirtualClock) -> None:
    async for b in running(Batcher(LatencyModel(SHAPE), small_plan(10_000, max_running=2), clock)):
        reqs = [request(f"r{i}", 5, 50) for i in range(3)]
        for r in reqs:
            b.submit(r)
        await settle()
        assert (len(b.running), len(b.waiting)) == (2, 1)


async def test_client_abort_frees_kv_and_admits_the_next(batcher: Batcher) -> None:
    big = request("big", prompt=60, out=30)  # 90 of 100 tokens
    small = request("small", prompt=20, out=5)
    batcher.submit(big)
    batcher.submit(small)
    await big.events.get()  # big is running and holds KV
    assert small.state == "waiting" and batcher.snapshot().used_tokens >= 60
    batcher.abort(big, "Client disconnected")
    assert batcher.snapshot().used_tokens == 0
    assert (await drain(big))[-1].finish == {"type": "abort", "message": "Client disconnected"}
    assert [e.generated for e in await drain(small)][-1] == 5


async def tpot(clock: VirtualClock, n: int, plan: MemoryPlan | None = None) -> float:
    """The time per output token of ``n`` requests of 1,000 + 20 tokens decoding together."""
    async for b in running(Batcher(LatencyModel(SHAPE), plan or small_plan(100_000), clock)):
        reqs = [request(f"r{i}", 1000, 20) for i in range(n)]
        for r in reqs:
            b.submit(r)
        events = await drain(reqs[0])
        return (events[-1].time - events[0].time) / (len(events) - 1)
    raise AssertionError


async def test_more_running_requests_make_each_step_slower(clock: VirtualClock) -> None:
    alone, crowded = await tpot(clock, 1), await tpot(clock, 128)
    assert crowded > alone * 1.5


async def test_chunked_prefill_budget_splits_admission(clock: VirtualClock) -> None:
    async for b in running(Batcher(LatencyModel(SHAPE), small_plan(10_000, chunk=100), clock)):
        reqs = [request(f"r{i}", 60, 3) for i in range(3)]
        for r in reqs:
            b.submit(r)
        firsts = [(await r.events.get()).time for r in reqs]
        assert firsts[0] < firsts[1] < firsts[2]  # 60 + 60 > 100: one prefill each


async def test_pause_retract_frees_kv_and_continue_recomputes(batcher: Batcher) -> None:
    req = request("r", prompt=20, out=8)
    batcher.submit(req)
    await req.events.get()
    await req.events.get()
    await batcher.pause("retract")
    snap = batcher.snapshot()
    assert (snap.num_running, snap.num_waiting, snap.used_tokens) == (0, 1, 0)
    assert snap.num_retracted == 1 and not batcher.is_idle()
    queued = req.events.qsize()  # the step in flight when pause came may have finished
    await settle()
    assert req.events.qsize() == queued  # nothing runs while paused
    batcher.unpause()
    events = await drain(req)
    assert events[-1].generated == 8 and req.retractions == 1


async def test_pause_abort_finishes_everything_with_abort(batcher: Batcher) -> None:
    a, b = request("a", 30, 50), request("b", 30, 50)  # b waits: 160 > 100 tokens
    batcher.submit(a)
    batcher.submit(b)
    await a.events.get()
    await batcher.pause("abort")
    assert batcher.is_idle()
    assert (await drain(a))[-1].finish["type"] == "abort"  # type: ignore[index]
    assert (await drain(b))[-1].finish == {"type": "abort", "message": "Abort in waiting queue"}


async def test_pause_in_place_keeps_kv_and_holds_progress(batcher: Batcher) -> None:
    req = request("r", 20, 60)
    batcher.submit(req)
    await req.events.get()
    await batcher.pause("in_place")
    used = batcher.snapshot().used_tokens
    before = req.events.qsize()
    await settle()
    assert req.events.qsize() == before and used > 0
    assert batcher.snapshot().num_paused == 1
    batcher.unpause()
    assert (await drain(req))[-1].generated == 60


async def test_hold_stops_steps_until_released(batcher: Batcher) -> None:
    await batcher.hold("released")
    req = request("r", 5, 3)
    batcher.submit(req)
    await settle()
    assert req.state == "waiting" and req.events.empty()
    batcher.unhold("released")
    assert (await drain(req))[-1].generated == 3


async def test_zero_output_tokens_finish_after_prefill(batcher: Batcher) -> None:
    req = request("r", 5, 0)
    batcher.submit(req)
    events = await drain(req)
    assert len(events) == 1 and events[0].generated == 0


async def test_a_request_larger_than_the_pool_is_refused(batcher: Batcher) -> None:
    with pytest.raises(ValueError, match="more than the pool"):
        batcher.submit(request("r", 90, 20))


async def test_snapshot_reports_throughput_and_decode_moments(batcher: Batcher) -> None:
    reqs = [request(f"r{i}", 10, 12) for i in range(2)]
    for r in reqs:
        batcher.submit(r)
    for r in reqs:
        await drain(r)
    snap = batcher.snapshot()
    assert snap.total_prefill_tokens == 20 and snap.total_prefill_busy_us > 0
    steps, sum_bs = snap.decode_moments[0], snap.decode_moments[1]
    assert steps == 11 and sum_bs == 22  # 11 decode steps of batch 2 after the joint prefill
    assert snap.gen_throughput > 0


async def test_a_decode_batch_above_the_captured_graphs_runs_eagerly(clock: VirtualClock) -> None:
    """SGLang replays a CUDA graph for a decode batch up to --cuda-graph-max-bs and runs a larger
    one eagerly (orchestrator/perf/calibration.py EAGER_DECODE_FACTOR); 0 is --disable-cuda-graph."""
    from orchestrator.perf.calibration import CUDA_GRAPH_BYTES_PER_BS, EAGER_DECODE_FACTOR

    def graphs(n: int) -> MemoryPlan:
        return replace(small_plan(100_000), cuda_graph_max_bs=n)

    assert await tpot(clock, 4, graphs(4)) == pytest.approx(await tpot(clock, 4, graphs(256)))  # a graph either way
    assert await tpot(clock, 5, graphs(4)) == pytest.approx(EAGER_DECODE_FACTOR * await tpot(clock, 5, graphs(256)))
    assert await tpot(clock, 1, graphs(0)) == pytest.approx(EAGER_DECODE_FACTOR * await tpot(clock, 1, graphs(256)))
    assert plan_memory(SHAPE, cuda_graph_max_bs=16).cuda_graph_max_bs == 16
    default = plan_memory(SHAPE)  # SGLang's own batch sizes for the card, and their memory
    assert default.cuda_graph_bytes == CUDA_GRAPH_BYTES_PER_BS * default.cuda_graph_max_bs > 0
