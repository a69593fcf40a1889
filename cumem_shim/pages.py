"""Page bookkeeping of one KV pool in one reserved virtual range. Pure: no CUDA, no clock.

SGLang's ``MHATokenToKVPool`` keeps ``2·L`` buffers (K then V of each layer), each of shape
``(size + page_size, H, D)``: row ``s`` of every buffer holds token slot ``s``. Physical memory
comes in pages of the driver's granularity ``G`` (2 MiB on an H100). A *block* is the smallest
set of token slots whose rows fill whole pages in every buffer: ``T`` slots, with ``T·row_i`` a
multiple of ``G`` for each buffer ``i`` and ``T`` a multiple of SGLang's ``page_size``. Mapping
block ``b`` therefore means mapping pages in all ``2·L`` buffers at once (a cross-layer page);
the map plan batches them: one handle per (buffer, block), one ``cuMemSetAccess`` per run of
consecutive blocks in a buffer.

Layout of the range: buffer ``i`` starts at ``offset(i)``, the sum of the earlier buffers' spans;
each span is ``num_blocks·T·row_i``, a multiple of ``G``, so every buffer starts page-aligned.
Block 0 holds SGLang's padding slot 0 (dummy writes of padded tokens and CUDA-graph capture go
there) and stays mapped for the life of the pool.

Units: SGLang's allocator hands out *units* of ``page_size`` slots (page_size 1: single slots).
Unit 0 is never free; block ``b`` holds units ``[b·U, (b+1)·U)`` cut at the pool's end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class Run:
    """``count`` consecutive handles of ``handle_bytes`` each, starting at byte ``offset`` of
    the range, covering ``blocks`` (one handle per block) in buffer ``buffer``."""

    buffer: int
    offset: int
    handle_bytes: int
    first_block: int
    count: int

    @property
    def size(self) -> int:
        return self.handle_bytes * self.count


@dataclass(frozen=True)
class KVLayout:
    granularity: int  # G: driver allocation granularity in bytes
    page_size: int  # SGLang's page_size: token slots per allocator unit
    slots: int  # rows per buffer = SGLang's size + page_size
    row_bytes: tuple[int, ...]  # bytes of one token slot in each buffer (k0..kL-1, v0..vL-1)

    def __post_init__(self) -> None:
        if self.granularity <= 0 or self.granularity & (self.granularity - 1):
            raise ValueError(f"granularity must be a power of two, got {self.granularity}")
        if self.page_size <= 0 or self.slots <= self.page_size or self.slots % self.page_size:
            raise ValueError(f"slots ({self.slots}) must be a multiple of page_size ({self.page_size}) above it")
        if not self.row_bytes or min(self.row_bytes) <= 0:
            raise ValueError("need at least one buffer with a positive row size")

    # -- sizes ---------------------------------------------------------------------------
    @cached_property
    def block_tokens(self) -> int:
        """T: the fewest slots whose rows fill whole pages in every buffer."""
        t = self.page_size
        for r in set(self.row_bytes):
            t = math.lcm(t, self.granularity // math.gcd(self.granularity, r))
        return t

    @cached_property
    def block_units(self) -> int:
        return self.block_tokens // self.page_size

    @cached_property
    def total_units(self) -> int:
        return self.slots // self.page_size

    @cached_property
    def num_blocks(self) -> int:
        return -(-self.slots // self.block_tokens)

    @cached_property
    def token_bytes(self) -> int:
        """KV bytes of one token slot across all buffers."""
        return sum(self.row_bytes)

    @cached_property
    def block_bytes(self) -> int:
        """Physical bytes one mapped block costs (all buffers)."""
        return self.block_tokens * self.token_bytes

    def handle_bytes(self, buffer: int) -> int:
        return self.block_tokens * self.row_bytes[buffer]

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, at = [], 0
        for i in range(len(self.row_bytes)):
            out.append(at)
            at += self.num_blocks * self.handle_bytes(i)
        return tuple(out)

    @cached_property
    def reserve_bytes(self) -> int:
        """Size of the virtual range: every buffer, every block (a multiple of G)."""
        last = len(self.row_bytes) - 1
        return self.offsets[last] + self.num_blocks * self.handle_bytes(last)

    @property
    def capacity_units(self) -> int:
        """Units SGLang can ever allocate (all but unit 0)."""
        return self.total_units - 1

    # -- blocks and units ----------------------------------------------------------------
    def units_of(self, block: int) -> range:
        """Allocatable units of ``block`` (unit 0 excluded)."""
        lo = max(1, block * self.block_units)
        return range(lo, min((block + 1) * self.block_units, self.total_units))

    def block_capacity(self, block: int) -> int:
        return len(self.units_of(block))

    def block_of(self, unit: int) -> int:
        return unit // self.block_units

    def capacity_of(self, blocks: Iterable[int]) -> int:
        return sum(self.block_capacity(b) for b in blocks)

    # -- limits --------------------------------------------------------------------------
    def blocks_for_limit(self, limit_bytes: int) -> int:
        """Most blocks a limit allows; never fewer than 1 (block 0 stays mapped)."""
        return max(1, min(self.num_blocks, limit_bytes // self.block_bytes))

    def units_for_blocks(self, nblocks: int) -> int:
        """Allocatable units in any ``nblocks`` blocks that include block 0 (the last block
        may be short: the count is capped at the pool's capacity)."""
        return max(0, min(self.capacity_units, nblocks * self.block_units - 1))

    def blocks_for_units(self, units: int) -> int:
        """Fewest blocks (block 0 included) that can hold ``units`` allocated units."""
        return max(1, min(self.num_blocks, -(-(units + 1) // self.block_units)))

    # -- plans ---------------------------------------------------------------------------
    def plan(self, blocks: Iterable[int]) -> tuple[Run, ...]:
        """Runs to map (or unmap) ``blocks`` in every buffer: per buffer, consecutive blocks
        are one run (one cuMemSetAccess), one handle per block."""
        chosen = sorted(set(blocks))
        for b in chosen:
            if not 0 <= b < self.num_blocks:
                raise ValueError(f"block {b} is outside the pool (0..{self.num_blocks - 1})")
        runs: list[Run] = []
        for first, count in _consecutive(chosen):
            for i in range(len(self.row_bytes)):
                hb = self.handle_bytes(i)
                runs.append(Run(i, self.offsets[i] + first * hb, hb, first, count))
        return tuple(runs)


def _consecutive(sorted_blocks: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in sorted_blocks:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


def mha_layout(
    *,
    granularity: int,
    page_size: int,
    size: int,
    layers: int,
    heads: int,
    head_dim: int,
    v_head_dim: int | None = None,
    dtype_bytes: int = 2,
) -> KVLayout:
    """The layout of SGLang's ``MHATokenToKVPool(size, page_size, ...)`` (NHD layout)."""
    k = heads * head_dim * dtype_bytes
    v = heads * (v_head_dim if v_head_dim is not None else head_dim) * dtype_bytes
    return KVLayout(granularity, page_size, size + page_size, (k,) * layers + (v,) * layers)
