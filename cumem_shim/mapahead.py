"""``MapAhead``: the map-ahead worker of one KV pool (``ElasticKV``) and the state it shares with
the pool.

Mapping one block costs ~2.5 ms for Llama-3.1-8B (64 pages of 2 MiB, H100), which
``ElasticKV.ensure`` would pay inside a prefill. So a daemon thread (``cumem-shim-map-ahead``)
keeps up to ``ahead`` of the lowest unmapped blocks *prepared* (mapped, access set, not in
SGLang's free list, which only the scheduler thread touches). They count against the limit and
in ``mapped_bytes``; when the limit drops the excess goes back to the worker to unmap (never
handed out: no GPU sync). The worker starts at the first allocation (no driver call from another
thread while SGLang captures CUDA graphs) and wakes when an allocation runs or the limit
changes. A failed prepare (out of memory) is logged and retried at the next allocation; any
other failure stops the worker and fails the next allocation with the cause.

Idle fill (``idle_fill_s`` > 0): once no allocation has come for that long, the worker keeps
preparing, a block at a time, up to the whole limit, and stops at the next allocation. A map
beside running kernels slows them (the driver's page-table work under a prefill: measured in
bench/shim/overhead.py), so a server that sits idle between bursts grows its pool while nothing
runs. The pool holds no more than its limit either way, and the prefix cache of a busy server
fills it to the limit in time; the prepared blocks go back to the worker when the limit falls.

Who calls: ``ElasticKV`` owns one (``ahead`` 0: no thread; the shared state stays empty and
allocations map every block themselves) and, on the scheduler thread, calls ``allocating`` at
each allocation, ``plan``/``take``/``claim``/``await_block``/``allocated`` inside one, ``trim``
when it applies a limit, and ``settle``/``stop``/``take_spare``. The worker thread (``_run``)
does its driver work through the pool (``Pool``: ``create``, ``destroy``, the status).

Lock: ``cond`` is the pool's (it also guards the pool's mapped blocks, handles and status). The
shared state changes only under it; driver calls run outside it. Methods marked "under cond"
expect the caller to hold it; the others take it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import NamedTuple, Protocol

from cumem_shim.errors import DriverError, ShimError
from cumem_shim.pages import KVLayout
from cumem_shim.stats import MapStats
from cumem_shim.types import Driver, Handles

log = logging.getLogger("cumem_shim")
WORKER_POLL_S = 1.0  # how often a scheduler waiting on the worker checks that it is alive
CLOSE_TIMEOUT_S = 30.0  # a worker still in a driver call after this is reported, not waited for


class Pool(Protocol):
    """What the worker uses of its pool (``ElasticKV``)."""

    layout: KVLayout
    driver: Driver
    mapped: set[int]  # blocks whose units SGLang may hold: read under cond
    stats: MapStats  # the worker counts ``prepared``, under cond

    def create(self, blocks: list[int], what: str) -> Handles:
        """Driver work, no lock held: create, map and open ``blocks``."""
        ...

    def destroy(self, blocks: list[int], handles: Handles, what: str) -> None:
        """Driver work, no lock held: unmap and release ``blocks``."""
        ...

    def refresh_mapped_bytes(self) -> None:
        """Under cond: refresh ``status().mapped_bytes`` (blocks holding physical memory)."""
        ...


class Grow(NamedTuple):
    """Where an allocation's missing blocks come from (``MapAhead.plan``)."""

    adopt: list[int]  # prepared: bookkeeping only
    new: list[int]  # mapped by the allocation itself
    waits: list[int]  # the worker is on them: wait, then adopt or map them


class MapAhead:
    def __init__(
        self,
        pool: Pool,
        cond: threading.Condition,
        ahead: int,
        *,
        idle_fill_s: float,
        cap: int,
        clock: Callable[[], float],
    ) -> None:
        if ahead < 0:
            raise ValueError(f"map_ahead_blocks={ahead} must be >= 0")
        if not idle_fill_s >= 0:
            raise ValueError(f"idle_fill_s={idle_fill_s} must be >= 0")
        self._pool, self.cond, self.ahead = pool, cond, ahead
        self.idle_fill_s, self._clock = idle_fill_s, clock
        self.last_alloc = clock()  # the last allocation: written by the scheduler, read by the worker
        # -- shared with the pool, under cond ------------------------------------------------
        self.prepared: dict[int, Handles] = {}  # ready for an allocation to adopt
        self.discard: dict[int, Handles] = {}  # prepared, above the limit: the worker unmaps
        self.inflight: int | None = None  # the block the worker is preparing
        self.destroying: int | None = None  # the discarded block the worker is unmapping
        self.claimed: frozenset[int] = frozenset()  # blocks the allocation maps itself right now
        self.wanted: int | None = None  # the in-flight block the allocation waits for: keep it
        self.cap = cap  # blocks mapped + prepared may reach
        self.armed = self.stopping = self.blocked = self.bound = False
        self.error: BaseException | None = None
        self.discards = 0  # prepared blocks given back unused (blocks)
        self._failing = False  # the last prepare failed (worker thread only)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (``ahead`` > 0); it makes no driver call before the first allocation."""
        if self.ahead:
            self.thread = threading.Thread(target=self._run, name="cumem-shim-map-ahead", daemon=True)
            self.thread.start()

    # -- scheduler thread -----------------------------------------------------------------
    def allocating(self) -> None:
        """At each allocation, first: note the time (idle fill), raise the worker's failure,
        arm it (the first allocation: CUDA graphs are captured by now) or let it retry."""
        self.last_alloc = self._clock()
        if self.thread is None:
            return
        self._check()
        if not self.armed or self.blocked:  # unlocked reads: a hint, _wake locks
            self._wake()

    def plan(self, short: int) -> Grow:
        """Under cond: the lowest unmapped blocks that hold ``short`` more units, sorted by
        where they come from. A discarded block not yet being unmapped is taken back (the limit
        rose again)."""
        lay, mapped = self._pool.layout, self._pool.mapped
        adopt, new, waits = [], [], []
        for b in range(lay.num_blocks):
            if short <= 0:
                break
            if b in mapped:
                continue
            if b in self.discard and b != self.destroying:
                self.prepared[b] = self.discard.pop(b)  # the limit rose again: keep it
            if b in self.prepared:
                adopt.append(b)
            elif b in (self.inflight, self.destroying):
                waits.append(b)  # the worker is on it: wait, then adopt or map it here
            else:
                new.append(b)
            short -= lay.block_capacity(b)
        return Grow(adopt, new, waits)

    def take(self, block: int) -> Handles:
        """Under cond: a prepared block's handles, for the pool to adopt."""
        return self.prepared.pop(block)

    def claim(self, new: list[int], waits: list[int]) -> None:
        """Under cond: keep the worker off the blocks the allocation maps or waits for."""
        self.claimed = frozenset(new) | frozenset(b for b in waits if b != self.inflight)
        self.wanted = self.inflight if self.inflight in waits else None

    def await_block(self, block: int) -> bool:
        """Under cond (released while waiting): wait until the worker is done with ``block``
        (preparing or unmapping it). True: it is prepared, adopt it; False: it is claimed for
        the allocation to map (it was unmapped, or preparing it failed)."""
        while block in (self.inflight, self.destroying) and self.error is None:
            self.cond.wait(WORKER_POLL_S)
        if block in self.prepared:
            return True
        self.claimed |= {block}
        return False

    def allocated(self) -> None:
        """The allocation is over (done or failed): drop its claims and let the worker go on."""
        with self.cond:
            self.claimed, self.wanted, self.blocked = frozenset(), None, False
            self.cond.notify_all()

    def trim(self, limit_bytes: int) -> None:
        """The scheduler applies the limit: hand prepared blocks above it (highest first) to
        the worker to unmap, and wake it when the limit lets it prepare more."""
        if self.thread is None:
            return
        with self.cond:
            cap = self._pool.layout.blocks_for_limit(limit_bytes)
            excess = len(self._pool.mapped) + len(self.prepared) - cap
            for b in sorted(self.prepared, reverse=True)[: max(0, excess)]:
                self.discard[b] = self.prepared.pop(b)
            if cap != self.cap or excess > 0:
                self.cap, self.blocked = cap, False
                self.cond.notify_all()

    def held(self) -> int:
        """Under cond: blocks the worker holds physical memory for (prepared, being prepared or
        discarded)."""
        return len(self.prepared) + len(self.discard) + (self.inflight is not None)

    def settle(self, timeout: float) -> bool:
        """Wait until the worker has nothing left to do (tests, benchmarks); False on timeout.
        True at once without a worker."""
        if self.thread is None:
            return True
        with self.cond:
            return self.cond.wait_for(self._settled, timeout)

    def stop(self) -> None:
        """Stop the worker and join it (close)."""
        if self.thread is None:
            return
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(CLOSE_TIMEOUT_S)
        if self.thread.is_alive():
            raise ShimError(
                f"cumem_shim: the map-ahead worker did not stop within "
                f"{CLOSE_TIMEOUT_S:.0f} s (a CUDA driver call hangs); the KV "
                "range is left mapped"
            )

    def take_spare(self) -> dict[int, Handles]:
        """The prepared and discarded blocks, for the pool to unmap at close (worker stopped)."""
        with self.cond:
            spare = {**self.prepared, **self.discard}
            self.prepared, self.discard = {}, {}
        return spare

    def _check(self) -> None:
        err = self.error
        if err is not None:
            raise ShimError(
                f"cumem_shim: the map-ahead worker stopped ({err!r}); restart the "
                "server, or set CHIMERA_SHIM_MAP_AHEAD_BLOCKS=0 to map on the "
                "scheduler thread only"
            ) from err

    def _wake(self) -> None:
        """Arm the worker and let it retry after a failure."""
        with self.cond:
            self.armed, self.blocked = True, False
            self.cond.notify_all()

    # -- the worker thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            # no driver call before the first allocation: SGLang captures its CUDA graphs
            # after creating the pool, and a call from another thread could break a capture
            with self.cond:
                while not (self.armed or self.stopping):
                    self.cond.wait()
                if self.stopping:
                    return
            self._pool.driver.bind_thread()
            with self.cond:
                self.bound = True
                self.cond.notify_all()
            while self._step():
                pass
        except BaseException as exc:  # re-raised on the scheduler thread by allocating()
            log.exception("cumem_shim: the map-ahead worker failed")
            with self.cond:
                self.error, self.inflight, self.destroying = exc, None, None
                self.cond.notify_all()

    def _step(self) -> bool:
        """One unit of work: unmap a discarded block, or prepare the next one. False: stop."""
        pool = self._pool
        with self.cond:
            while True:
                if self.stopping:
                    return False
                if self.discard:
                    first = min(self.discard)
                    self._give_back(first, self.discard[first])
                    return True
                chosen = self._next_block()
                if chosen is not None:
                    block = self.inflight = chosen
                    pool.refresh_mapped_bytes()
                    break
                self.cond.wait(self._until_fill())
        try:
            handles = pool.create([block], "prepare")
        except DriverError as exc:  # out of memory, most likely: retry at the next wake-up
            # logged once per run of failures: while the GPU stays full every allocation retries
            (log.debug if self._failing else log.warning)(
                "cumem_shim: map-ahead of block %d failed, mapping on demand until the next allocation: %s", block, exc
            )
            self._failing = True
            with self.cond:
                self.inflight, self.blocked = None, True
                pool.refresh_mapped_bytes()
                self.cond.notify_all()
            return True
        self._failing = False
        with self.cond:
            self.inflight = None
            pool.stats.prepared += 1
            held = len(pool.mapped) + len(self.prepared) + 1
            if self.stopping or (block != self.wanted and held > self.cap):
                self.discard[block] = handles  # the limit dropped meanwhile
            else:
                self.prepared[block] = handles
            pool.refresh_mapped_bytes()
            self.cond.notify_all()
        return True

    def _give_back(self, block: int, handles: Handles) -> None:
        """Entered and left under cond (released meanwhile): unmap a discarded block. It stays
        in ``discard`` (counted as held, skipped by allocations) until it is gone."""
        self.destroying = block
        self.cond.release()
        try:
            self._pool.destroy([block], handles, "discard")
        finally:
            self.cond.acquire()
            self.destroying = None
        del self.discard[block]
        self.discards += 1
        self._pool.refresh_mapped_bytes()
        self.cond.notify_all()

    def _next_block(self) -> int | None:
        """Under cond: the lowest block to prepare, or None (not armed, enough prepared, the
        limit reached, a failure waiting for a wake-up)."""
        held = self._claimed_blocks()
        lay, mapped = self._pool.layout, self._pool.mapped
        ahead = lay.num_blocks if self._idle_for() >= self.idle_fill_s > 0 else self.ahead
        if not self.armed or self.blocked or len(self.prepared) >= ahead or held >= self.cap:
            return None
        for b in range(lay.num_blocks):
            if b not in mapped and b not in self.prepared and b not in self.discard and b not in self.claimed:
                return b
        return None

    def _claimed_blocks(self) -> int:
        """Under cond: blocks mapped, prepared, being discarded or being mapped by an allocation."""
        return len(self._pool.mapped) + len(self.prepared) + len(self.discard) + len(self.claimed)

    def _idle_for(self) -> float:
        return self._clock() - self.last_alloc

    def _until_fill(self) -> float | None:
        """Under cond: how long the idle worker may sleep before an idle fill is due (None:
        until woken; no fill set, or nothing it could map)."""
        if not self.idle_fill_s or not self.armed or self.blocked or self._claimed_blocks() >= self.cap:
            return None
        return max(0.01, self.idle_fill_s - self._idle_for())

    def _settled(self) -> bool:
        return (
            self.error is not None
            or self.stopping
            or not self.armed
            or (self.bound and self.inflight is None and not self.discard and self._next_block() is None)
        )
