"""Keeping a shape pool's hot checkpoints in host RAM: read into the page cache ahead of the
re-targets that will load them (``/update_weights_from_disk`` then reads memory, not disk).
Which ones: orchestrator/policy/staging.py, from the pool router's popularity, within the
pool's ``stage_gb``.

Asked after each pooled request (``Stager.poke``, from the pool router: popularity changes
only then, and decays alike for every checkpoint, so the ranking cannot change in between).
A pool's reads run one checkpoint after another on a daemon thread (a read of 16 GB must
neither hold the event loop nor keep the process from exiting); a request that comes while
they run asks again when they end. Dropped checkpoints are let go with
``posix_fadvise(DONTNEED)``: the kernel may then reuse their pages. A pool with ``stage: pinned``
stages into the pinned holder's buffers instead (pinned/client.py ``PinnedCache``), which a
re-target pushes at the copy engine's speed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from orchestrator.config import PoolSpec
from orchestrator.policy.staging import Checkpoint, decide
from orchestrator.pools.holdings import Holdings

log = logging.getLogger("chimera.pools")
CHUNK = 16 << 20


class PageCache:
    """The host's page cache, a checkpoint directory at a time."""

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}

    def files(self, path: str) -> list[Path]:
        root = Path(path)
        if not root.is_dir():
            return []  # a hub name or a shape: nothing on this host's disk to read
        return sorted(p for p in root.rglob("*") if p.is_file())

    def size(self, path: str) -> int:
        if path not in self._sizes:
            self._sizes[path] = sum(p.stat().st_size for p in self.files(path))
        return self._sizes[path]

    def read(self, path: str) -> int:
        """Read every file of the checkpoint once (into the page cache); bytes read."""
        total = 0
        buf = bytearray(CHUNK)
        for f in self.files(path):
            with open(f, "rb", buffering=0) as fh:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                while n := fh.readinto(buf):
                    total += n
        return total

    def drop(self, path: str) -> None:
        for f in self.files(path):
            with open(f, "rb") as fh:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    def lost(self, paths: Iterable[str]) -> set[str]:
        """Of ``paths`` staged, those no longer held (never, for the page cache: the kernel may
        evict pages, and a read then comes from disk, as before staging)."""
        return set()


class Stager:
    def __init__(
        self,
        pools: tuple[PoolSpec, ...],
        paths: Mapping[str, tuple[str, ...]],  # pool -> its members' model paths
        holdings: Holdings,
        cache: PageCache | None = None,
        on_staged: Callable[[str, int], None] | None = None,  # (pool, bytes staged) after each change
        clock: Callable[[], float] = time.monotonic,
        pinned: PageCache | None = None,  # for pools with ``stage: pinned`` (pinned/client.py PinnedCache)
    ) -> None:
        self._budget = {p.name: p.stage_bytes for p in pools if p.stage_bytes > 0}
        self._paths = paths
        self._holdings = holdings
        page_cache = cache or PageCache()
        self._cache_of = {p.name: pinned if p.stage == "pinned" and pinned is not None else page_cache for p in pools}
        self._on_staged = on_staged
        self._clock = clock
        self._staged_at: dict[str, dict[str, float]] = {p: {} for p in self._budget}  # pool -> path -> when
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self.done = asyncio.Event()  # set whenever a pool's reads end (tests wait on it)

    @property
    def staged(self) -> dict[str, set[str]]:
        """Per pool with a budget, the checkpoints staged now."""
        return {pool: set(at) for pool, at in self._staged_at.items()}

    def poke(self, pool: str) -> None:
        """Plan the pool's staging again and start what the plan says (no-op without a budget)."""
        if pool not in self._budget:
            return
        if pool in self._busy:
            self._again.add(pool)
            return
        for p in self._cache_of[pool].lost(list(self._staged_at[pool])):  # a pinned holder that restarted
            del self._staged_at[pool][p]
        now = self._clock()
        spec = self._holdings.pool(pool)
        held = {self._holdings.holds(s) for s in spec.slots}
        pop = self._holdings.popularity(pool)
        cks = [
            Checkpoint(
                p,
                self._cache_of[pool].size(p),
                pop[p].now(now) if p in pop else 0.0,
                p in held,
                self._staged_at[pool].get(p),
            )
            for p in dict.fromkeys(self._paths.get(pool, ()))
        ]
        plan = decide(cks, frozenset(self._staged_at[pool]), self._budget[pool], now)
        if not plan.stage and not plan.drop:
            return
        self._busy.add(pool)
        self.done.clear()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._work, args=(loop, pool, plan.stage, plan.drop), name=f"stage-{pool}", daemon=True
        ).start()

    def _work(self, loop: asyncio.AbstractEventLoop, pool: str, stage: tuple[str, ...], drop: tuple[str, ...]) -> None:
        done: list[str] = []
        for p in drop:
            try:
                self._cache_of[pool].drop(p)
            except OSError as exc:
                log.warning("pool %s: cannot let go of %s in the page cache: %s", pool, p, exc)
        for p in stage:
            t0 = time.monotonic()
            try:
                n = self._cache_of[pool].read(p)
            except OSError as exc:
                log.warning("pool %s: cannot stage %s in host RAM: %s", pool, p, exc)
                continue
            done.append(p)
            log.info("pool %s: staged %s in host RAM (%.2f GB in %.1f s)", pool, p, n / 1e9, time.monotonic() - t0)
        try:
            loop.call_soon_threadsafe(self._finished, pool, done, drop)
        except RuntimeError:  # the loop closed: chimera is exiting
            pass

    def _finished(self, pool: str, staged: list[str], dropped: tuple[str, ...]) -> None:
        now = self._clock()
        for p in dropped:
            self._staged_at[pool].pop(p, None)
        for p in staged:
            self._staged_at[pool][p] = now
        self._busy.discard(pool)
        if self._on_staged is not None:
            self._on_staged(pool, sum(self._cache_of[pool].size(p) for p in self._staged_at[pool]))
        if pool in self._again:
            self._again.discard(pool)
            self.poke(pool)
        if not self._busy:
            self.done.set()
