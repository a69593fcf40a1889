"""cumem_shim.elastic.ElasticKV over the fake device, with a free list that behaves like
SGLang's token allocator (alloc from the front, free appends)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cumem_shim.elastic import ElasticKV
from cumem_shim.errors import DriverError
from cumem_shim.fake import TWO_MIB, FakeDevice
from cumem_shim.freelist import CountingFreeList, SlotFreeList
from cumem_shim.limit import DRAIN_HEADROOM_UNITS
from cumem_shim.pages import KVLayout, mha_layout

G = TWO_MIB
# tiny-llama's pool: 2 layers x 4 KV heads x 64 x bf16 = 512 B a slot a buffer: 4096-slot
# blocks of 4 pages (8 MiB)
LAYOUT = mha_layout(granularity=G, page_size=1, size=100_000, layers=2, heads=4, head_dim=64)
BLOCK = LAYOUT.block_bytes


def make(
    limit_blocks: float, *, layout: KVLayout = LAYOUT, slack: int = 256, capacity: int = 80 << 30
) -> tuple[ElasticKV, SlotFreeList, FakeDevice]:
    dev = FakeDevice(capacity_bytes=capacity)
    kv = ElasticKV(layout, dev, 0, int(limit_blocks * layout.block_bytes), slack_tokens=slack)
    fl = SlotFreeList(layout)
    kv.attach(fl)
    return kv, fl, dev


def alloc(kv: ElasticKV, fl: SlotFreeList, n: int) -> list[int]:
    kv.ensure(n)  # what the allocator hook does before SGLang's own alloc
    out = fl.alloc(n)
    assert out is not None
    return out


def check_invariants(kv: ElasticKV, fl: SlotFreeList, dev: FakeDevice, held: list[int]) -> None:
    lay = kv.layout
    assert 0 in kv.mapped
    assert dev.mapped_bytes == dev.physical_bytes == len(kv.mapped) * lay.block_bytes
    kept = [u for units in fl.held.values() for u in units]  # quarantined: free, held back
    assert len(set(fl.free)) == len(fl.free) and not set(fl.free) & set(held)
    assert not set(kept) & (set(fl.free) | set(held))
    assert len(fl.free) + len(kept) + len(held) == kv.layout.capacity_of(kv.mapped)  # nothing lost
    assert {lay.block_of(u) for u in fl.free} <= kv.mapped
    assert set(fl.held) <= kv._victims and {lay.block_of(u) for u in kept} <= kv._victims
    if kv._victims:
        assert kv.available() <= fl.free_units()  # never more than SGLang's list holds
    sample = held if len(held) <= 300 else random.Random(len(held)).sample(held, 300)
    for u in sample:  # every slot in use is backed in every buffer (a kernel may touch it)
        for i, row in enumerate(lay.row_bytes):
            assert dev.is_accessible(kv.base + lay.offsets[i] + u * lay.page_size * row)
    assert kv.used_units() == len(held)


def test_starts_with_block_zero_only_and_maps_on_demand() -> None:
    kv, fl, dev = make(3)
    assert kv.mapped == {0} and dev.mapped_bytes == BLOCK
    assert kv.available() == 3 * LAYOUT.block_units - 1
    held = alloc(kv, fl, 5000)  # one more block
    assert kv.mapped == {0, 1}
    check_invariants(kv, fl, dev, held)
    kv.publish()
    assert kv.status().used_tokens == 5000 and kv.status().mapped_bytes == 2 * BLOCK


def test_grow_and_shrink_under_the_limit() -> None:
    kv, fl, dev = make(2)
    held = alloc(kv, fl, kv.available())
    assert kv.available() == 0 and kv.mapped == {0, 1}
    assert kv.set_limit(4 * BLOCK, 1).applied
    assert kv.available() == 2 * LAYOUT.block_units
    held += alloc(kv, fl, kv.available())
    assert len(kv.mapped) == 4
    assert kv.set_limit(BLOCK, 2).applied
    kv.available()
    assert kv.status().draining and len(kv.mapped) == 4  # everything is in use: deferred
    fl.release(held)
    held = []
    kv.available()
    assert kv.mapped == {0} and dev.mapped_bytes == BLOCK and not kv.status().draining
    check_invariants(kv, fl, dev, held)


def test_shrink_below_use_leaves_slack_and_never_fails_an_allocation() -> None:
    kv, fl, dev = make(4, slack=100)
    held = alloc(kv, fl, 10_000)
    kv.set_limit(BLOCK, 1)
    assert kv.available() == 100  # running requests may still decode into the slack
    held += alloc(kv, fl, 100)
    assert kv.available() == DRAIN_HEADROOM_UNITS  # the ratchet does not rise; headroom stays
    held += alloc(kv, fl, 3 * DRAIN_HEADROOM_UNITS)  # past available: still served, never fails
    check_invariants(kv, fl, dev, held)
    fl.release(held[:9000])
    held = held[9000:]
    avail = kv.available()
    assert avail == max(0, LAYOUT.units_for_blocks(1) - len(held))
    check_invariants(kv, fl, dev, held)


def test_a_shrink_quarantines_the_emptiest_blocks_so_they_drain() -> None:
    kv, fl, dev = make(6)
    held = alloc(kv, fl, 5 * LAYOUT.block_units)
    rng = random.Random(0)
    rng.shuffle(held)
    fl.release(held[: len(held) // 2])  # scattered frees: no block is fully free
    held = held[len(held) // 2 :]
    used = {b: LAYOUT.block_capacity(b) - n for b, n in enumerate(fl.free_per_block()) if b in kv.mapped}
    kv.set_limit(3 * BLOCK, 1)  # holds what is in use, not where it lies
    kv.available()
    assert not kv.status().draining
    emptiest = sorted((b for b in used if b), key=lambda b: (used[b], -b))[:3]
    assert used[5] == 0 and 5 not in kv.mapped  # the fully free one went at once
    assert kv._victims == set(emptiest) - {5} and len(kv.mapped) == 5  # still in use: quarantined
    assert {LAYOUT.block_of(u) for u in fl.free} <= kv.mapped - kv._victims  # out of SGLang's reach
    check_invariants(kv, fl, dev, held)
    fl.release(held)
    held = []
    kv.available()
    assert len(kv.mapped) == 3 and not kv._victims and not fl.held
    check_invariants(kv, fl, dev, held)


def test_clear_frees_everything_and_unmaps_above_the_limit() -> None:
    kv, fl, dev = make(8)
    alloc(kv, fl, 7 * LAYOUT.block_units - 1)
    kv.set_limit(2 * BLOCK, 1)
    kv.available()
    assert len(kv.mapped) == 7
    kv.on_clear()  # SGLang's flush_cache / clear: every slot is free again
    assert len(kv.mapped) == 2
    check_invariants(kv, fl, dev, [])


def test_limit_zero_keeps_only_block_zero() -> None:
    kv, fl, dev = make(4)
    fl.release(alloc(kv, fl, 9000))
    kv.set_limit(0, 1)
    kv.available()
    assert kv.mapped == {0} and kv.status().limit_tokens == LAYOUT.block_units - 1


def test_failed_map_leaves_the_range_as_it_was() -> None:
    kv, fl, dev = make(10, capacity=BLOCK + 2 * G)  # room for block 0 and half a block
    with pytest.raises(DriverError, match="cuMemCreate failed: CUDA_ERROR_OUT_OF_MEMORY"):
        kv.ensure(5000)
    assert kv.mapped == {0} and dev.mapped_bytes == dev.physical_bytes == BLOCK
    assert fl.free_units() == LAYOUT.block_units - 1


def test_close_gives_everything_back() -> None:
    kv, fl, dev = make(4)
    alloc(kv, fl, 9000)
    kv.close()
    assert dev.mapped_bytes == dev.physical_bytes == 0 and not dev._reserved


def test_counting_free_list_models_a_compacting_pool() -> None:
    dev = FakeDevice()
    kv = ElasticKV(LAYOUT, dev, 0, 4 * BLOCK)
    fl = CountingFreeList(LAYOUT)
    kv.attach(fl)
    kv.ensure(3 * LAYOUT.block_units - 1)
    assert fl.alloc(3 * LAYOUT.block_units - 1) is not None
    assert len(kv.mapped) == 3
    fl.release_any(2 * LAYOUT.block_units)
    kv.set_limit(BLOCK, 1)
    kv.available()
    assert len(kv.mapped) == 1 and fl.used_units() == LAYOUT.block_units - 1


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.floats(0, 1.2)),
        st.tuples(st.just("free"), st.floats(0, 1)),
        st.tuples(st.just("limit"), st.floats(0, 30)),
        st.tuples(st.just("clear"), st.just(0.0)),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(ops, st.sampled_from([1, 16]), st.integers(0, 2**32 - 1))
def test_random_workloads_keep_every_invariant(seq: list[tuple[str, float]], page: int, seed: int) -> None:
    lay = mha_layout(granularity=G, page_size=page, size=8192 * 8 - page, layers=2, heads=2, head_dim=64)
    kv, fl, dev = make(3, layout=lay, slack=64)
    rng, held, revision, forced = random.Random(seed), list[int](), 0, False
    for op, x in seq:
        if op == "alloc":
            avail = kv.available()
            n = int(avail * x)
            if 0 < n <= avail:
                held += alloc(kv, fl, n)
            elif avail == 0 and x > 1 and len(held) < lay.capacity_units:
                held += alloc(kv, fl, 1)  # SGLang past available_size (its last request)
                forced = True
        elif op == "free" and held:
            rng.shuffle(held)
            k = int(len(held) * x)
            fl.release(held[:k])
            held = held[k:]
        elif op == "limit":
            revision += 1
            kv.set_limit(int(x * lay.block_bytes), revision)
        elif op == "clear":
            held = []
            kv.on_clear()
        kv.available()
        check_invariants(kv, fl, dev, held)
    if not forced and lay.slots % lay.block_tokens == 0:
        assert kv.over_limit_maps == 0  # within available_size the limit is never passed
    fl.release(held)
    kv.available()
    assert len(kv.mapped) <= kv.layout.blocks_for_limit(kv.limit_bytes)
