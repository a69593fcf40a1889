"""``ElasticKV``: one KV pool's virtual range, its mapped blocks, and its limit.

Threads: the control-channel thread calls only ``set_limit`` and ``status`` (thread-safe);
everything else runs on the SGLang scheduler thread, from the allocator hooks:

- ``available()`` before SGLang decides what fits (its ``available_size``): applies a new
  limit, unmaps what is above it when blocks are fully free, and answers how many units SGLang
  may still allocate under the limit (``limit.drain`` when the limit is below use).
- ``ensure(units)`` before each allocation: maps blocks until that many units are free.
  Within the limit first; past it only when SGLang asks for more than ``available()`` said
  (its last running request after retractions): an allocation never fails for the limit.
- ``attach(freelist)`` / ``on_clear()`` when the allocator starts or is cleared.

Addresses never move (CUDA graphs bake them in): the range is reserved once, blocks are mapped
and unmapped in place, block 0 (SGLang's padding slot) stays mapped until ``close``. Before
unmapping, the GPU is synchronized so no kernel still in flight touches the pages.
"""

from __future__ import annotations

import logging

from cumem_shim.limit import Accepted, LimitBox, drain
from cumem_shim.pages import KVLayout, Run
from cumem_shim.types import Driver, FreeList, Handle, Status

log = logging.getLogger("cumem_shim")
RECLAIM_PATIENCE = 64


class ElasticKV:
    def __init__(self, layout: KVLayout, driver: Driver, device: int, limit_bytes: int, *,
                 slack_tokens: int = 2048) -> None:
        self.layout, self.driver, self.device = layout, driver, device
        self.box = LimitBox(limit_bytes)
        self.slack_units = max(1, -(-slack_tokens // layout.page_size))
        self.base = driver.reserve(layout.reserve_bytes, layout.granularity)
        self.mapped: set[int] = set()
        self._mapped_units = 0  # allocatable units in the mapped blocks (kept, not summed)
        self._handles: dict[tuple[int, int], Handle] = {}  # (buffer, block) -> handle
        self.freelist: FreeList | None = None
        self.limit_bytes, self.revision = limit_bytes, 0
        self._target = layout.units_for_blocks(layout.blocks_for_limit(limit_bytes))
        self._effective = self._target
        self._floor: int | None = None
        self._free_mark = 0  # free units at the last reclaim attempt
        self._reclaim_due = False
        self._waited = 0  # maintain() calls over the limit since the last reclaim attempt
        self.over_limit_maps = 0  # blocks mapped past the limit to keep SGLang from failing
        self.maps = self.unmaps = 0  # blocks mapped / unmapped so far
        self._map([0])
        self._status = self._make_status()

    # -- thread-safe API (control channel) ------------------------------------------------
    def set_limit(self, limit_bytes: int, revision: int) -> Accepted:
        return self.box.post(limit_bytes, revision)

    def status(self) -> Status:
        return self._status

    # -- scheduler thread -----------------------------------------------------------------
    def attach(self, freelist: FreeList) -> None:
        self.freelist = freelist
        self.on_clear()

    def on_clear(self) -> None:
        """The allocator was (re)initialized: every unit of every mapped block is free."""
        assert self.freelist is not None
        self.freelist.reset(sorted(self.mapped))
        self._reclaim_due = True
        self.maintain()

    def used_units(self) -> int:
        if self.freelist is None:
            return 0
        return self._mapped_units - self.freelist.free_units()

    def excess_units(self) -> int:
        """Units in use above the limit while a shrink drains: when SGLang evicts from its
        prefix cache, it is asked to evict this much more (hooks_sglang._evict)."""
        return max(0, self.used_units() - self._target) if self._floor is not None else 0

    def available(self) -> int:
        """Units SGLang may allocate now without passing the limit."""
        self.maintain()
        used = self.used_units()
        return max(0, min(self._effective, self.layout.capacity_units) - used)

    def ensure(self, units: int) -> None:
        """Map blocks until at least ``units`` units are free (see the module docstring)."""
        assert self.freelist is not None
        short = units - self.freelist.free_units()
        if short <= 0:
            return
        allowed = self._allowed_blocks()
        new: list[int] = []
        for b in range(self.layout.num_blocks):
            if short <= 0:
                break
            if b not in self.mapped:
                new.append(b)
                short -= self.layout.block_capacity(b)
        past = max(0, len(self.mapped) + len(new) - allowed)
        if past:
            self.over_limit_maps += past
            log.warning("cumem_shim: mapping %d block(s) past the limit (%d bytes): SGLang "
                        "allocates more than available_size() allowed", past, self.limit_bytes)
        if new:
            self._map(new)
            self.freelist.add(new)
            self.publish()

    def maintain(self) -> None:
        """Apply a new limit; unmap blocks above it that are fully free."""
        taken = self.box.take()
        if taken is not None:
            self.limit_bytes, self.revision = taken
            self._target = self.layout.units_for_blocks(self.layout.blocks_for_limit(taken[0]))
            self._reclaim_due = True
        if self.freelist is None:
            return
        used = self.used_units()
        self._effective, self._floor = drain(self._target, used, self._floor, self.slack_units)
        over = len(self.mapped) > self._allowed_blocks()
        if over:
            # A reclaim costs a GPU sync (free_per_block): try when a limit just dropped,
            # when a quarter block's worth of units came free, or when some did and the
            # scheduler has asked RECLAIM_PATIENCE times since (an idle one asks about 1/s).
            gained = self.freelist.free_units() - self._free_mark
            self._waited += 1
            if (self._reclaim_due or used == 0 or gained >= max(1, self.layout.block_units // 4)
                    or (gained > 0 and self._waited >= RECLAIM_PATIENCE)):
                self._reclaim()
        self._reclaim_due = False
        self.publish()

    def close(self) -> None:
        """Unmap everything and free the range (tests, benchmarks; SGLang never frees)."""
        self.driver.synchronize()
        self._unmap(sorted(self.mapped))
        self.driver.free_address(self.base, self.layout.reserve_bytes)

    # -- internals ------------------------------------------------------------------------
    def _allowed_blocks(self) -> int:
        return max(self.layout.blocks_for_limit(self.limit_bytes),
                   self.layout.blocks_for_units(self._effective))

    def _reclaim(self) -> None:
        assert self.freelist is not None
        per_block = self.freelist.free_per_block()
        excess = len(self.mapped) - self._allowed_blocks()
        victims = [b for b in sorted(self.mapped, reverse=True)
                   if b != 0 and per_block[b] == self.layout.block_capacity(b)][:excess]
        if victims:
            self.freelist.remove(victims)
            self.driver.synchronize()  # no kernel in flight may touch these pages
            self._unmap(victims)
        if excess > len(victims):
            self.freelist.prefer_full(per_block)  # drain the emptiest blocks next
        self._free_mark = self.freelist.free_units()
        self._waited = 0

    def _map(self, blocks: list[int]) -> None:
        done: list[tuple[Run, int, Handle, bool]] = []  # (run, k, handle, mapped)
        try:
            for run in self.layout.plan(blocks):
                for k in range(run.count):
                    h = self.driver.create(run.handle_bytes, self.device)
                    done.append((run, k, h, False))
                    self.driver.map(self.base + run.offset + k * run.handle_bytes,
                                    run.handle_bytes, h)
                    done[-1] = (run, k, h, True)
                self.driver.set_access(self.base + run.offset, run.size, self.device)
        except BaseException:
            for run, k, h, is_mapped in reversed(done):  # leave the range as it was
                if is_mapped:
                    self.driver.unmap(self.base + run.offset + k * run.handle_bytes,
                                      run.handle_bytes)
                self.driver.release(h)
            raise
        for run, k, h, _ in done:
            self._handles[(run.buffer, run.first_block + k)] = h
        self.mapped.update(blocks)
        self._mapped_units += self.layout.capacity_of(blocks)
        self.maps += len(blocks)

    def _unmap(self, blocks: list[int]) -> None:
        for run in self.layout.plan(blocks):
            for k in range(run.count):
                self.driver.unmap(self.base + run.offset + k * run.handle_bytes, run.handle_bytes)
                self.driver.release(self._handles.pop((run.buffer, run.first_block + k)))
        self.mapped.difference_update(blocks)
        self._mapped_units -= self.layout.capacity_of(blocks)
        self.unmaps += len(blocks)

    def _make_status(self) -> Status:
        lay = self.layout
        return Status(
            mapped_bytes=len(self.mapped) * lay.block_bytes,
            used_tokens=self.used_units() * lay.page_size, limit_bytes=self.limit_bytes,
            revision=self.revision, capacity_tokens=lay.capacity_units * lay.page_size,
            limit_tokens=self._target * lay.page_size, block_bytes=lay.block_bytes,
            block_tokens=lay.block_tokens, draining=self._floor is not None)

    def publish(self) -> None:
        """Refresh what ``status()`` answers (the allocator hook calls it after each alloc)."""
        self._status = self._make_status()  # one reference swap: readers see a whole tuple
