"""ElasticKV's map-ahead worker (cumem_shim.mapahead) over the fake device: prepared blocks are
adopted by ensure() without a driver call on the scheduler thread, the limit caps them, a shrink
gives them back, close() stops the worker, and random workloads with the worker running keep
every invariant.

No test sleeps: the worker is awaited with ``settle`` (bounded), and ordered against the
scheduler thread with the fake's ``before_call`` seam and events (bounded waits)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cumem_shim.elastic import ElasticKV
from cumem_shim.errors import DriverError, ShimError
from cumem_shim.fake import TWO_MIB, FakeDevice
from cumem_shim.freelist import SlotFreeList
from cumem_shim.pages import KVLayout, mha_layout

LAYOUT = mha_layout(
    granularity=TWO_MIB, page_size=1, size=100_000, layers=2, heads=4, head_dim=64
)  # 4096-slot blocks of 4 pages (8 MiB), 25 blocks
BLOCK = LAYOUT.block_bytes
UNITS = LAYOUT.block_units
WORKER = "cumem-shim-map-ahead"
WAIT_S = 10.0  # bounded waits: a test that needs them fails instead of hanging


def make(
    limit_blocks: int, ahead: int = 2, *, layout: KVLayout = LAYOUT, dev: FakeDevice | None = None
) -> tuple[ElasticKV, SlotFreeList, FakeDevice]:
    dev = dev if dev is not None else FakeDevice(strict_context=True)
    kv = ElasticKV(layout, dev, 0, limit_blocks * layout.block_bytes, slack_tokens=256, map_ahead_blocks=ahead)
    fl = SlotFreeList(layout)
    kv.attach(fl)
    return kv, fl, dev


def arm(kv: ElasticKV) -> None:
    """The first allocation starts the worker; wait until it has prepared what it may."""
    kv.ensure(0)
    assert kv.settle(WAIT_S)


def here(dev: FakeDevice) -> Counter[str]:
    """Driver calls made by this (the scheduler's) thread."""
    me = threading.current_thread().name
    return Counter({call: n for (name, call), n in dev.thread_calls.items() if name == me})


def held_blocks(dev: FakeDevice, layout: KVLayout = LAYOUT) -> int:
    assert dev.physical_bytes == dev.mapped_bytes
    return dev.physical_bytes // layout.block_bytes


def test_the_worker_waits_for_the_first_allocation() -> None:
    kv, fl, dev = make(6)
    assert kv.settle(WAIT_S)
    assert held_blocks(dev) == 1 and not kv._worker.prepared  # CUDA graphs may be captured now
    arm(kv)
    assert sorted(kv._worker.prepared) == [1, 2] and kv.mapped == {0}
    assert held_blocks(dev) == 3 and kv.status().mapped_bytes == 3 * BLOCK
    assert fl.free_units() == UNITS - 1  # prepared blocks are not in SGLang's free list
    assert dev.thread_calls[(WORKER, "cuCtxSetCurrent")] == 1
    assert dev.thread_calls[(WORKER, "cuMemCreate")] == 2 * len(LAYOUT.row_bytes)
    kv.close()


def test_ensure_adopts_prepared_blocks_without_a_driver_call() -> None:
    kv, fl, dev = make(6)
    arm(kv)
    before = here(dev)
    kv.ensure(3 * UNITS - 1)  # blocks 1 and 2
    assert here(dev) == before  # bookkeeping only
    assert kv.mapped == {0, 1, 2} and kv.stats.adopted == kv.maps - 1 == 2
    assert fl.free_units() == 3 * UNITS - 1
    assert kv.settle(WAIT_S)
    assert sorted(kv._worker.prepared) == [3, 4]  # the next two, prepared after the adoption
    kv.publish()
    assert kv.status().mapped_bytes == 5 * BLOCK == held_blocks(dev) * BLOCK
    kv.close()


def test_ensure_maps_what_is_not_prepared_and_waits_for_the_block_in_flight() -> None:
    gate, started = threading.Event(), threading.Event()

    def order(call: str) -> None:
        if threading.current_thread().name == WORKER and call == "cuMemCreate":
            started.set()
            assert gate.wait(WAIT_S)  # held inside block 1 until the scheduler maps
        elif call == "cuMemCreate":
            gate.set()

    dev = FakeDevice(strict_context=True)
    kv, fl, _ = make(6, dev=dev)
    dev.before_call = order
    kv.ensure(0)
    assert started.wait(WAIT_S) and kv._worker.inflight == 1
    kv.ensure(3 * UNITS - 1)  # block 1 is in flight: map block 2 here, then adopt block 1
    assert kv.mapped == {0, 1, 2} and kv.stats.adopted == 1
    assert here(dev)["cuMemCreate"] == 2 * len(LAYOUT.row_bytes)  # block 0, block 2
    dev.before_call = None
    assert kv.settle(WAIT_S) and sorted(kv._worker.prepared) == [3, 4]
    kv.close()


def test_the_limit_caps_preparation() -> None:
    kv, fl, dev = make(2)
    arm(kv)
    assert sorted(kv._worker.prepared) == [1] and held_blocks(dev) == 2
    kv.ensure(2 * UNITS - 1)
    assert kv.settle(WAIT_S) and not kv._worker.prepared and held_blocks(dev) == 2
    kv.set_limit(5 * BLOCK, 1)
    kv.available()  # the scheduler applies the limit and wakes the worker
    assert kv.settle(WAIT_S) and sorted(kv._worker.prepared) == [2, 3] and held_blocks(dev) == 4
    kv.close()


def test_a_shrink_gives_prepared_blocks_back_first() -> None:
    kv, fl, dev = make(6)
    arm(kv)
    syncs = dev.calls["cuCtxSynchronize"]
    kv.set_limit(2 * BLOCK, 1)
    kv.available()
    assert sorted(kv._worker.prepared) == [1]  # block 2 handed to the worker at once
    assert kv.settle(WAIT_S) and held_blocks(dev) == 2
    kv.set_limit(0, 2)
    kv.available()
    assert kv.settle(WAIT_S) and held_blocks(dev) == 1 and not kv._worker.prepared
    assert kv.status().mapped_bytes == BLOCK and kv.discards == 2
    assert dev.calls["cuCtxSynchronize"] == syncs  # never in the free list: no GPU sync
    assert dev.thread_calls[(WORKER, "cuMemUnmap")] == 2 * len(LAYOUT.row_bytes)
    kv.close()


def test_a_shrink_below_use_is_deferred_and_prepares_nothing() -> None:
    kv, fl, dev = make(3)
    arm(kv)
    held = fl.alloc(0) or []
    kv.ensure(3 * UNITS - 1)
    got = fl.alloc(3 * UNITS - 1)
    assert got is not None
    held += got
    kv.set_limit(BLOCK, 1)
    assert kv.available() == 256  # draining: slack only
    assert kv.settle(WAIT_S) and kv.status().draining and not kv._worker.prepared
    assert len(kv.mapped) == 3
    fl.release(held)
    kv.available()
    assert kv.settle(WAIT_S) and kv.mapped == {0} and held_blocks(dev) == 1
    kv.close()


def test_a_failed_prepare_is_retried_at_the_next_allocation() -> None:
    dev = FakeDevice(capacity_bytes=2 * BLOCK, strict_context=True)
    kv, fl, _ = make(6, dev=dev)
    arm(kv)  # block 1 fits, block 2 is out of memory: logged, not retried in a loop
    assert sorted(kv._worker.prepared) == [1] and kv._worker.blocked
    creates = dev.calls["cuMemCreate"]
    kv.ensure(UNITS)  # adopts block 1 and lets the worker try again (out of memory again)
    assert kv.mapped == {0, 1} and kv.settle(WAIT_S)
    assert dev.calls["cuMemCreate"] > creates and not kv._worker.prepared
    with pytest.raises(DriverError, match="CUDA_ERROR_OUT_OF_MEMORY"):
        kv.ensure(3 * UNITS)  # on demand: the allocation fails as without map-ahead
    kv.close()
    assert dev.physical_bytes == 0


def test_a_broken_worker_fails_the_next_allocation_loudly() -> None:
    class NoContext(FakeDevice):
        def bind_thread(self) -> None:
            raise DriverError("cuCtxSetCurrent", "CUDA_ERROR_INVALID_CONTEXT")

    kv, fl, dev = make(6, dev=NoContext(strict_context=True))
    assert kv.settle(WAIT_S)
    # no driver call from the worker before the first allocation (CUDA graph capture)
    assert not [k for k in dev.thread_calls if k[0] == "cumem-shim-map-ahead"]
    arm(kv)  # the first allocation arms the worker, whose context binding then fails
    with pytest.raises(ShimError, match="CHIMERA_SHIM_MAP_AHEAD_BLOCKS=0") as err:
        kv.ensure(UNITS)
    assert isinstance(err.value.__cause__, DriverError)
    kv.close()


def test_close_stops_the_worker_and_gives_everything_back() -> None:
    kv, fl, dev = make(6)
    arm(kv)
    kv.ensure(UNITS)
    worker = kv._worker.thread
    assert worker is not None and worker.is_alive()
    kv.close()
    assert not worker.is_alive()
    assert dev.physical_bytes == dev.mapped_bytes == 0 and not dev._reserved


def test_map_ahead_zero_runs_no_thread_and_maps_on_demand() -> None:
    threads = threading.active_count()
    kv, fl, dev = make(6, ahead=0, dev=FakeDevice())
    kv.ensure(3 * UNITS - 1)
    assert kv._worker.thread is None and threading.active_count() == threads
    assert kv.mapped == {0, 1, 2} and kv.stats.adopted == 0 and held_blocks(dev) == 3
    assert {name for name, _ in dev.thread_calls} == {threading.current_thread().name}
    assert kv.settle(0)
    with pytest.raises(ValueError, match="map_ahead_blocks"):
        ElasticKV(LAYOUT, FakeDevice(), 0, BLOCK, map_ahead_blocks=-1)
    kv.close()


# -- random workloads with the worker running ----------------------------------------------
ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.floats(0, 1.3)),
        st.tuples(st.just("free"), st.floats(0, 1)),
        st.tuples(st.just("limit"), st.floats(0, 12)),
        st.tuples(st.just("maintain"), st.just(0.0)),
        st.tuples(st.just("clear"), st.just(0.0)),
        st.tuples(st.just("settle"), st.just(0.0)),
    ),
    max_size=40,
)


def jitter(rng: random.Random) -> Callable[[str], None]:
    """Yield the GIL at random driver calls so the two threads interleave differently."""
    lock = threading.Lock()

    def hook(call: str) -> None:
        with lock:
            yielding = rng.random() < 0.3
        if yielding:
            threading.Event().wait(0)  # a zero timeout: a thread switch, not a sleep

    return hook


def check_now(kv: ElasticKV, fl: SlotFreeList, dev: FakeDevice, held: list[int]) -> None:
    """What holds at any moment on the scheduler thread, whatever the worker does."""
    lay = kv.layout
    assert 0 in kv.mapped
    assert len(set(fl.free)) == len(fl.free) and not set(fl.free) & set(held)
    assert {lay.block_of(u) for u in fl.free} <= kv.mapped
    for u in held[:50] + held[-50:]:
        for i, row in enumerate(lay.row_bytes):
            assert dev.is_accessible(kv.base + lay.offsets[i] + u * lay.page_size * row)
    assert kv.used_units() == len(held)


def check_settled(kv: ElasticKV, dev: FakeDevice) -> None:
    """What holds once the worker is idle: the device, the books and status() agree, and
    preparation stayed within the limit."""
    assert kv.settle(WAIT_S), "the worker did not settle"
    with kv._cond:
        prepared = set(kv._worker.prepared)
        assert not kv._worker.discard and kv._worker.inflight is None
    assert not prepared & kv.mapped and len(prepared) <= kv.map_ahead
    lay = kv.layout
    assert held_blocks(dev, lay) == len(kv.mapped) + len(prepared)
    if prepared:
        assert len(kv.mapped) + len(prepared) <= lay.blocks_for_limit(kv.limit_bytes)
    kv.publish()
    assert kv.status().mapped_bytes == dev.physical_bytes


def drive(seq: list[tuple[str, float]], page: int, ahead: int, seed: int) -> ElasticKV:
    """Run ``seq`` on the scheduler thread (this one) while the worker runs; check after
    every step; answer the closed pool."""
    lay = mha_layout(
        granularity=TWO_MIB, page_size=page, size=8192 * 8 - page, layers=2, heads=2, head_dim=64
    )  # 8192-slot blocks, 8 blocks
    rng = random.Random(seed)
    dev = FakeDevice(strict_context=True, before_call=jitter(random.Random(seed + 1)))
    kv, fl, _ = make(3, ahead, layout=lay, dev=dev)
    held: list[int] = []
    revision = 0
    try:
        for op, x in seq:
            if op == "alloc":
                avail = kv.available()
                n = int(avail * x)
                if not 0 < n <= avail:  # past available_size: SGLang's last request
                    n = 1 if avail == 0 and x > 1 and len(held) < lay.capacity_units else 0
                if n:
                    kv.ensure(n)
                    got = fl.alloc(n)
                    assert got is not None, f"ensure({n}) left {fl.free_units()} free"
                    held += got
            elif op == "free" and held:
                rng.shuffle(held)
                k = int(len(held) * x)
                fl.release(held[:k])
                held = held[k:]
            elif op == "limit":
                revision += 1
                assert kv.set_limit(int(x * lay.block_bytes), revision).applied
                kv.available()
            elif op == "maintain":
                kv.maintain()
            elif op == "clear":
                held = []
                kv.on_clear()
            elif op == "settle":
                check_settled(kv, dev)
            check_now(kv, fl, dev, held)
        fl.release(held)
        held = []
        kv.available()
        check_settled(kv, dev)
    finally:
        kv.close()
    assert kv._worker.thread is not None and not kv._worker.thread.is_alive()
    assert dev.physical_bytes == 0
    return kv


@settings(max_examples=60, deadline=None)
@given(ops, st.sampled_from([1, 16]), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_random_workloads_with_the_worker_keep_every_invariant(
    seq: list[tuple[str, float]], page: int, ahead: int, seed: int
) -> None:
    drive(seq, page, ahead, seed)


def test_long_random_workloads_adopt_and_give_back() -> None:
    """Longer runs than hypothesis generates, weighted to allocations and limit moves."""
    adopted = discards = 0
    for seed in range(6):
        rng = random.Random(seed)
        kinds = ["alloc"] * 4 + ["free"] * 3 + ["limit", "maintain", "settle"]
        seq = [
            (op, {"alloc": rng.uniform(0, 1.3), "free": rng.random(), "limit": rng.uniform(0, 12)}.get(op, 0.0))
            for op in (rng.choice(kinds) for _ in range(150))
        ]
        kv = drive(seq, 16, 1 + seed % 3, seed)
        adopted, discards = adopted + kv.stats.adopted, discards + kv.discards
    assert adopted > 0 and discards > 0  # both paths ran


def test_the_worker_makes_no_driver_call_before_the_first_allocation() -> None:
    """SGLang captures its CUDA graphs after it creates the pool: until the first allocation
    the worker thread must not touch the driver (not even to bind its context)."""
    kv, fl, dev = make(6)
    assert kv.settle(WAIT_S)
    time.sleep(0.05)  # give a wrongly eager worker the chance to run
    assert not [k for k in dev.thread_calls if k[0] == "cumem-shim-map-ahead"]
    arm(kv)
    assert [k for k in dev.thread_calls if k[0] == "cumem-shim-map-ahead"]
    kv.close()
