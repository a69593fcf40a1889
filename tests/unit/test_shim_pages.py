"""cumem_shim.pages: granularity math, block <-> unit <-> page mapping, batched map plans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cumem_shim.pages import KVLayout, mha_layout

G = 2 << 20


def test_llama_8b_layout_on_an_h100() -> None:
    # 8 KV heads x 128 x bf16 = 2 KiB per slot per buffer: 1024 slots fill one 2 MiB page
    lay = mha_layout(granularity=G, page_size=1, size=200_000, layers=32, heads=8, head_dim=128)
    assert lay.block_tokens == 1024
    assert lay.block_bytes == 64 * G  # one page in each of the 64 K/V buffers
    assert lay.token_bytes == 128 * 1024
    assert lay.num_blocks == -(-200_001 // 1024)
    assert lay.reserve_bytes == lay.num_blocks * lay.block_bytes
    assert lay.units_of(0) == range(1, 1024)  # slot 0 is SGLang's padding slot


def test_rows_that_do_not_divide_a_page_get_a_larger_block() -> None:
    lay = KVLayout(G, 1, 100_001, (1536, 1536))  # 1536 = 3 * 512: 4096 slots = 3 pages
    assert lay.block_tokens == 4096
    assert lay.handle_bytes(0) == 3 * G


def test_block_is_a_multiple_of_the_sglang_page() -> None:
    lay = KVLayout(G, 48, 48 * 1000, (G,))  # one row is a whole page: T is the page size
    assert lay.block_tokens == 48 and lay.block_units == 1


def test_plan_batches_consecutive_blocks_per_buffer() -> None:
    lay = mha_layout(granularity=G, page_size=1, size=100_000, layers=2, heads=4, head_dim=64)
    runs = lay.plan([3, 1, 2, 7])
    assert {(r.first_block, r.count) for r in runs} == {(1, 3), (7, 1)}
    assert len(runs) == 2 * 4  # two runs in each of the 4 buffers
    assert sum(r.size for r in runs) == 4 * lay.block_bytes
    with pytest.raises(ValueError, match="outside the pool"):
        lay.plan([lay.num_blocks])


def test_limit_to_blocks_never_below_one() -> None:
    lay = mha_layout(granularity=G, page_size=1, size=100_000, layers=2, heads=4, head_dim=64)
    assert lay.blocks_for_limit(0) == 1
    assert lay.blocks_for_limit(lay.block_bytes * 3 + 1) == 3
    assert lay.blocks_for_limit(1 << 50) == lay.num_blocks


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        KVLayout(3 << 20, 1, 100, (512,))
    with pytest.raises(ValueError, match="multiple of page_size"):
        KVLayout(G, 16, 100, (512,))
    with pytest.raises(ValueError, match="positive row"):
        KVLayout(G, 1, 100, ())


layouts = st.builds(
    lambda gran, page, blocks_extra, layers, heads, dim, dtype, v_dim: mha_layout(
        granularity=gran,
        page_size=page,
        size=page * blocks_extra,
        layers=layers,
        heads=heads,
        head_dim=dim,
        v_head_dim=v_dim,
        dtype_bytes=dtype,
    ),
    gran=st.sampled_from([4096, 65536, G]),
    page=st.sampled_from([1, 16, 64]),
    blocks_extra=st.integers(1, 3000),
    layers=st.integers(1, 4),
    heads=st.integers(1, 8),
    dim=st.sampled_from([24, 64, 80, 128]),
    dtype=st.sampled_from([1, 2, 4]),
    v_dim=st.sampled_from([None, 64, 96]),
)


@settings(max_examples=150, deadline=None)
@given(layouts)
def test_block_size_is_minimal_and_page_aligned(lay: KVLayout) -> None:
    t, g = lay.block_tokens, lay.granularity
    assert t % lay.page_size == 0
    assert all(t * r % g == 0 for r in lay.row_bytes)
    if t <= 1 << 16:  # no smaller multiple of the page size fills whole pages everywhere
        for smaller in range(lay.page_size, t, lay.page_size):
            assert not all(smaller * r % g == 0 for r in lay.row_bytes)


@settings(max_examples=150, deadline=None)
@given(layouts)
def test_buffers_are_aligned_disjoint_and_large_enough(lay: KVLayout) -> None:
    spans = [(lay.offsets[i], lay.num_blocks * lay.handle_bytes(i)) for i in range(len(lay.row_bytes))]
    for (off, span), r in zip(spans, lay.row_bytes, strict=True):
        assert off % lay.granularity == 0 and span % lay.granularity == 0
        assert span >= lay.slots * r  # every row SGLang indexes lies in the range
    for (a, sa), (b, _) in zip(spans, spans[1:], strict=False):
        assert a + sa == b
    assert spans[-1][0] + spans[-1][1] == lay.reserve_bytes


@settings(max_examples=150, deadline=None)
@given(layouts)
def test_blocks_partition_the_allocatable_units(lay: KVLayout) -> None:
    seen: list[int] = []
    for b in range(lay.num_blocks):
        units = lay.units_of(b)
        assert len(units) <= lay.block_units
        assert all(lay.block_of(u) == b for u in units)
        seen.extend(units)
    assert seen == list(range(1, lay.total_units))
    assert lay.capacity_of(range(lay.num_blocks)) == lay.capacity_units


@settings(max_examples=150, deadline=None)
@given(layouts, st.data())
def test_plan_covers_exactly_the_rows_of_the_blocks(lay: KVLayout, data: st.DataObject) -> None:
    blocks = data.draw(st.sets(st.integers(0, lay.num_blocks - 1), max_size=12))
    runs = lay.plan(blocks)
    covered = sorted((r.offset, r.offset + r.size) for r in runs)
    for (_, end), (start, _) in zip(covered, covered[1:], strict=False):
        assert end <= start  # runs never overlap
    assert sum(r.size for r in runs) == len(blocks) * lay.block_bytes
    for r in runs:
        assert r.handle_bytes % lay.granularity == 0
    for b in blocks:
        for i, row in enumerate(lay.row_bytes):
            lo = lay.offsets[i] + b * lay.block_tokens * row
            hi = lo + lay.block_tokens * row
            assert any(s <= lo and hi <= e for s, e in covered)


@settings(max_examples=100, deadline=None)
@given(layouts, st.integers(0, 1 << 40))
def test_limits_round_down_to_whole_blocks(lay: KVLayout, limit: int) -> None:
    n = lay.blocks_for_limit(limit)
    assert 1 <= n <= lay.num_blocks
    assert n * lay.block_bytes <= max(limit, lay.block_bytes)
    units = lay.units_for_blocks(n)
    assert lay.blocks_for_units(units) <= n
    assert units <= lay.capacity_units
