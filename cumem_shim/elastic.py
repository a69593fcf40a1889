"""``ElasticKV``: one KV pool's virtual range, its mapped blocks, and its limit.

Threads: the control-channel thread calls only ``set_limit`` and ``status`` (thread-safe);
the map-ahead worker (mapahead.py) only prepares and discards blocks; everything else runs on
the SGLang scheduler thread, from the allocator hooks:

- ``available()`` before SGLang decides what fits (its ``available_size``): applies a new
  limit, drains what is above it (below), and answers how many units SGLang may still
  allocate under the limit (``limit.drain`` when the limit is below use).
- ``ensure(units)`` before each allocation: makes blocks available until that many units are
  free: quarantined units first (below), then blocks the worker prepared (bookkeeping only),
  else it maps them itself. Within the limit first; past it only when SGLang asks for more
  than ``available()`` said (its last running request after retractions): an allocation never
  fails for the limit.
- ``attach(freelist)`` / ``on_clear()`` when the allocator starts or is cleared.

Shrinks under load (quarantine.py): while more blocks are mapped than the limit allows, the
excess blocks (the emptiest; never block 0) are *victims*: each sweep (``_reclaim``, a GPU sync,
gated like before) holds their free units out of SGLang's free list, unmaps the victims whose
units are all held, and re-chooses the victims (fewer if the limit rose: the fullest are given
back). Between sweeps, units of victims that come free are put behind every other unit before
each allocation (``put_last``, no sync), so SGLang allocates into a victim only when it asks
past ``available()``. Accounting: used = mapped units − units in SGLang's list − held units,
so held units are free, never used; ``available()`` never answers more than the list holds
while there are victims (the victims are chosen so that it need not: the kept blocks hold the
limit's and the drain's units).

Map-ahead (``map_ahead_blocks`` > 0) and idle fill (``idle_fill_s`` > 0): the pool owns a
``MapAhead`` (mapahead.py), whose thread keeps the next blocks *prepared* (mapped, not in
SGLang's free list) for ``ensure`` to adopt; they count against the limit and in
``mapped_bytes``, and a lower limit hands them back to it to unmap. State shared with the worker
(``mapped``, the handles, the status, and the worker's prepared and discarded blocks and cap)
changes only under ``_cond``; driver calls run outside it (``create``, ``destroy``: either
thread). ``stats`` (stats.py) counts what allocations adopted, mapped themselves or waited for.

Addresses never move (CUDA graphs bake them in): the range is reserved once, blocks are mapped
and unmapped in place, block 0 (SGLang's padding slot) stays mapped until ``close``. Before
unmapping a block that was in the free list, the GPU is synchronized so no kernel still in
flight touches the pages (prepared blocks were never handed out: no sync).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cumem_shim.limit import Accepted, LimitBox, drain
from cumem_shim.mapahead import MapAhead
from cumem_shim.maptrace import MapTrace
from cumem_shim.pages import KVLayout, Run
from cumem_shim.quarantine import choose
from cumem_shim.stats import MapStats, ShrinkStats
from cumem_shim.types import Driver, FreeList, Handle, Handles, Status

log = logging.getLogger("cumem_shim")
RECLAIM_PATIENCE = 64


class ElasticKV:
    def __init__(
        self,
        layout: KVLayout,
        driver: Driver,
        device: int,
        limit_bytes: int,
        *,
        slack_tokens: int = 2048,
        map_ahead_blocks: int = 0,
        ranked: bool = False,
        idle_fill_s: float = 0.0,
        trace: MapTrace | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # the pool's lock, shared with the worker; not re-entrant: MapAhead._give_back releases it
        self._cond = threading.Condition(threading.Lock())
        self._worker = MapAhead(
            self,
            self._cond,
            map_ahead_blocks,
            idle_fill_s=idle_fill_s,
            cap=layout.blocks_for_limit(limit_bytes),  # blocks mapped + prepared may reach
            clock=clock,
        )
        self.trace, self._clock = trace, clock
        self.layout, self.driver, self.device = layout, driver, device
        self.box = LimitBox(limit_bytes)
        # TP > 1 (ranks.py): the channel's box only collects; the scheduler applies what every
        # rank agreed on, carried in SGLang's per-step broadcast. TP 1: the channel's box.
        self.ranked = ranked
        self.agreed = LimitBox(limit_bytes) if ranked else self.box
        self.slack_units = max(1, -(-slack_tokens // layout.page_size))
        self.base = driver.reserve(layout.reserve_bytes, layout.granularity)
        self.mapped: set[int] = set()  # blocks whose units SGLang may hold (in the free list)
        self._mapped_units = 0  # allocatable units in the mapped blocks (kept, not summed)
        self._handles: Handles = {}  # handles of the mapped blocks
        self.freelist: FreeList | None = None
        self.limit_bytes, self.revision = limit_bytes, 0
        self._target = layout.units_for_blocks(layout.blocks_for_limit(limit_bytes))
        self._effective = self._target
        self._floor: int | None = None
        self._reclaim_due = False
        self._waited = 0  # maintain() calls over the limit since the last reclaim attempt
        self._victims: frozenset[int] = frozenset()  # quarantined blocks (quarantine.py)
        self._last_used = 0  # used units at the last look (_observe)
        self._freed = 0  # units seen freed since the last reclaim attempt
        self._unsorted = False  # units were freed since victims' units were last put last
        self.shrink = ShrinkStats()  # quarantined, held back, unmapped
        self.over_limit_maps = 0  # blocks mapped past the limit to keep SGLang from failing
        self.maps = self.unmaps = 0  # blocks made available to SGLang / unmapped so far
        self.stats = MapStats()  # prepared, adopted, mapped or waited for in allocations
        self._map([0])
        self._status = self._make_status(0)
        self._worker.start()

    @property
    def map_ahead(self) -> int:
        """Blocks the worker keeps prepared (0: no worker)."""
        return self._worker.ahead

    @property
    def idle_fill_s(self) -> float:
        """Idle seconds after which the worker prepares up to the limit (0: never)."""
        return self._worker.idle_fill_s

    @property
    def discards(self) -> int:
        """Prepared blocks given back unused (blocks)."""
        return self._worker.discards

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
        self._victims, self._last_used = frozenset(), 0
        self._count_held()
        self._reclaim_due = True
        self.maintain()

    def used_units(self) -> int:
        """Units SGLang holds (requests and its prefix cache): held units are free."""
        if self.freelist is None:
            return 0
        return self._mapped_units - self.freelist.free_units() - self.freelist.held_units()

    def excess_units(self) -> int:
        """Units in use above the limit while a shrink drains: when SGLang evicts from its
        prefix cache, it is asked to evict this much more (hooks_sglang._evict)."""
        return max(0, self.used_units() - self._target) if self._floor is not None else 0

    def available(self) -> int:
        """Units SGLang may allocate now without passing the limit."""
        self.maintain()
        assert self.freelist is not None
        avail = min(self._effective, self.layout.capacity_units) - self.used_units()
        if self._victims:  # no unmapped room under the limit: only what the list holds
            avail = min(avail, self.freelist.free_units())
        return max(0, avail)

    def ensure(self, units: int) -> None:
        """Make blocks available until at least ``units`` units are free (see the module
        docstring): adopt prepared blocks, wait for the one the worker is preparing if it is
        needed, map the rest here."""
        assert self.freelist is not None
        self._worker.allocating()
        self._observe(self.used_units())
        short = units - self.freelist.free_units()
        if short > 0 and self._victims:
            self._give_back_victims(short)  # held units before new memory
            short = units - self.freelist.free_units()
        if self._victims and self._unsorted:
            self.freelist.put_last(sorted(self._victims))  # nothing new lands in a victim
            self._unsorted = False
        if short <= 0:
            return
        with self._cond:
            adopt, new, waits = self._worker.plan(short)
            self._adopt(adopt)
            self._worker.claim(new, waits)
        past = max(0, len(self.mapped) + len(new) + len(waits) - self._allowed_blocks())
        if past:
            self.over_limit_maps += past
            log.warning(
                "cumem_shim: mapping %d block(s) past the limit (%d bytes): SGLang "
                "allocates more than available_size() allowed",
                past,
                self.limit_bytes,
            )
        ready, t0 = list(adopt), time.perf_counter()
        try:
            if new:
                self._map(new)
                ready += new
            t1 = time.perf_counter()
            for b in waits:
                self._await_worker(b)
                ready.append(b)
            self.stats.grew(len(new), t1 - t0, len(waits), time.perf_counter() - t1)
        finally:
            self._worker.allocated()
            if ready:
                self.freelist.add(ready)
                self.publish()
            if (line := self.stats.log_line(time.perf_counter())) is not None:
                log.info(line)

    def maintain(self) -> None:
        """Apply a new limit; give back prepared blocks above it; unmap blocks above it that
        are fully free."""
        taken = self.agreed.take()
        if taken is not None:
            self.limit_bytes, self.revision = taken
            self._target = self.layout.units_for_blocks(self.layout.blocks_for_limit(taken[0]))
            self._reclaim_due = True
        self._worker.trim(self.limit_bytes)
        if self.freelist is None:
            return
        used = self.used_units()
        self._observe(used)
        self._effective, self._floor = drain(self._target, used, self._floor, self.slack_units)
        if self._victims or len(self.mapped) > self._allowed_blocks():
            # A reclaim costs a GPU sync (free_per_block): try when the limit just moved,
            # when a block's worth of units came free (frees, not net: under load allocations
            # refill as fast; a block, so a sync is paid at most once per block of requests'
            # tokens), or when some did and the scheduler has asked RECLAIM_PATIENCE times
            # since (an idle one asks about 1/s).
            self._waited += 1
            if (
                self._reclaim_due
                or used == 0
                or self._freed >= self.layout.block_units
                or (self._freed > 0 and self._waited >= RECLAIM_PATIENCE)
            ):
                self._reclaim(used)
        self._reclaim_due = False
        self.publish()
        if (line := self.shrink.log_line(time.perf_counter(), self.layout.page_size)) is not None:
            log.info(line)

    def settle(self, timeout: float) -> bool:
        """Wait until the worker has nothing left to do (tests, benchmarks); False on timeout.
        True at once without a worker."""
        return self._worker.settle(timeout)

    def close(self) -> None:
        """Stop the worker, unmap everything and free the range (tests, benchmarks; SGLang
        never frees)."""
        self._worker.stop()
        for b, handles in sorted(self._worker.take_spare().items()):
            self.destroy([b], handles, "discard")
        self.driver.synchronize()
        self._unmap(sorted(self.mapped))
        self.driver.free_address(self.base, self.layout.reserve_bytes)

    # -- internals (scheduler thread) -----------------------------------------------------
    def _allowed_blocks(self) -> int:
        return max(self.layout.blocks_for_limit(self.limit_bytes), self.layout.blocks_for_units(self._effective))

    def _adopt(self, blocks: list[int]) -> None:
        """Under _cond: prepared blocks become mapped (bookkeeping only, no driver call)."""
        for b in blocks:
            self._handles.update(self._worker.take(b))
        self.mapped.update(blocks)
        self._mapped_units += self.layout.capacity_of(blocks)
        self.maps += len(blocks)
        self.stats.adopted += len(blocks)

    def _await_worker(self, block: int) -> None:
        """Wait for the worker to finish preparing ``block`` (it started before ensure() ran,
        so this is shorter than mapping it here) and adopt it, or to finish unmapping it and
        map it here; map it here too if preparing it failed."""
        with self._cond:
            if self._worker.await_block(block):
                self._adopt([block])
                return
        self._map([block])

    def _observe(self, used: int) -> None:
        """Count units freed since the last look (any fall in use: allocations happen inside
        the allocator hooks, which look before and after, so frees show between looks)."""
        if used < self._last_used:
            self._freed += self._last_used - used
            self._unsorted = True
        self._last_used = used

    def _reclaim(self, used: int) -> None:
        """One sweep: re-choose the victims, give back those no longer needed, unmap the fully
        free ones, hold the free units of the rest."""
        assert self.freelist is not None
        lay, fl = self.layout, self.freelist
        per_block = fl.free_per_block()  # syncs
        self.shrink.sweeps += 1
        victims = choose(
            self._victims,
            {b: lay.block_capacity(b) - per_block[b] for b in self.mapped},
            lay.block_capacity,
            max(self._target, min(self._effective, lay.capacity_units)),
            max(0, len(self.mapped) - self._allowed_blocks()),
        )
        released = sorted(self._victims - victims)
        if released:
            fl.unhold(released)
            self.shrink.released += len(released)
        self.shrink.quarantined += len(victims - self._victims)
        empty = sorted(b for b in victims if per_block[b] == lay.block_capacity(b))
        if empty:
            fl.remove(empty)
            self.driver.synchronize()  # no kernel in flight may touch these pages
            self._unmap(empty)
            self.shrink.unmapped += len(empty)
            self.shrink.unmapped_under_load += len(empty) if used > 0 else 0
        self._victims = victims.difference(empty)
        fl.hold(sorted(self._victims))
        fl.put_last(sorted(self._victims))  # none in the list now; a hint for counting lists
        self._count_held()
        self._freed, self._waited, self._unsorted = 0, 0, False

    def _give_back_victims(self, short: int) -> None:
        """SGLang asks past ``available()``: give back held units, the fullest victims (the
        furthest from empty) first, until ``short`` more units are in the list."""
        assert self.freelist is not None
        held = self.freelist.held_per_block()
        back: list[int] = []
        for b in sorted(self._victims, key=lambda b: (held.get(b, 0), b)):
            if short <= 0:
                break
            back.append(b)
            short -= held.get(b, 0)
        self.freelist.unhold(back)
        self._victims = self._victims.difference(back)
        self.shrink.released += len(back)
        self._unsorted = True
        self._count_held()
        log.warning(
            "cumem_shim: gave %d quarantined block(s) back: SGLang allocates more than available_size() allowed",
            len(back),
        )

    def _count_held(self) -> None:
        assert self.freelist is not None
        self.shrink.victims, self.shrink.held_units = len(self._victims), self.freelist.held_units()

    def _map(self, blocks: list[int]) -> None:
        handles = self.create(blocks, "inline")
        with self._cond:
            self._handles.update(handles)
            self.mapped.update(blocks)
            self._mapped_units += self.layout.capacity_of(blocks)
            self.maps += len(blocks)

    def _unmap(self, blocks: list[int]) -> None:
        with self._cond:
            handles = {key: self._handles.pop(key) for key in self._keys(blocks)}
        self.destroy(blocks, handles, "unmap")
        with self._cond:
            self.mapped.difference_update(blocks)
            self._mapped_units -= self.layout.capacity_of(blocks)
            self.unmaps += len(blocks)

    # -- driver work (either thread; no lock held) ----------------------------------------
    def _keys(self, blocks: list[int]) -> list[tuple[int, int]]:
        return [(run.buffer, run.first_block + k) for run in self.layout.plan(blocks) for k in range(run.count)]

    def create(self, blocks: list[int], what: str) -> Handles:
        """Create, map and open ``blocks`` in every buffer; on failure leave the range as it
        was and raise. ``what``: the trace's name for it."""
        done: list[tuple[Run, int, Handle, bool]] = []  # (run, k, handle, mapped)
        start = self._clock()
        try:
            for run in self.layout.plan(blocks):
                for k in range(run.count):
                    h = self.driver.create(run.handle_bytes, self.device)
                    done.append((run, k, h, False))
                    self.driver.map(self.base + run.offset + k * run.handle_bytes, run.handle_bytes, h)
                    done[-1] = (run, k, h, True)
                self.driver.set_access(self.base + run.offset, run.size, self.device)
        except BaseException:
            for run, k, h, is_mapped in reversed(done):
                if is_mapped:
                    self.driver.unmap(self.base + run.offset + k * run.handle_bytes, run.handle_bytes)
                self.driver.release(h)
            raise
        self._traced(what, blocks, start)
        return {(run.buffer, run.first_block + k): h for run, k, h, _ in done}

    def destroy(self, blocks: list[int], handles: Handles, what: str) -> None:
        start = self._clock()
        for run in self.layout.plan(blocks):
            for k in range(run.count):
                self.driver.unmap(self.base + run.offset + k * run.handle_bytes, run.handle_bytes)
                self.driver.release(handles[(run.buffer, run.first_block + k)])
        self._traced(what, blocks, start)

    def _traced(self, what: str, blocks: list[int], start: float) -> None:
        if self.trace is not None:
            end = self._clock()
            for b in blocks:
                self.trace.record(what, b, start, end)

    # -- status ---------------------------------------------------------------------------
    def _held_blocks(self) -> int:
        """Under _cond: blocks holding physical memory (mapped, prepared, being prepared or
        discarded)."""
        return len(self.mapped) + self._worker.held()

    def refresh_mapped_bytes(self) -> None:
        """Under _cond (either thread): ``status().mapped_bytes`` from the blocks held now."""
        self._status = self._status._replace(mapped_bytes=self._held_blocks() * self.layout.block_bytes)

    def _make_status(self, used_units: int) -> Status:
        lay = self.layout
        return Status(
            mapped_bytes=self._held_blocks() * lay.block_bytes,
            used_tokens=used_units * lay.page_size,
            limit_bytes=self.limit_bytes,
            revision=self.revision,
            capacity_tokens=lay.capacity_units * lay.page_size,
            limit_tokens=self._target * lay.page_size,
            block_bytes=lay.block_bytes,
            block_tokens=lay.block_tokens,
            draining=self._floor is not None,
            maps=self.stats.counts(),
            shrink=self.shrink.counts(lay.page_size),
        )

    def publish(self) -> None:
        """Refresh what ``status()`` answers (the allocator hook calls it after each alloc)."""
        used = self.used_units()
        self._observe(used)
        with self._cond:
            self._status = self._make_status(used)  # one reference swap: a whole tuple
