"""What the shim's allocation path did, counted on the SGLang scheduler thread: how many
blocks the map-ahead worker prepared and the scheduler adopted (no driver call), and how many
the scheduler had to map itself or wait for inside an allocation — the maps a request pays
for. ``ElasticKV`` owns one; ``status()`` carries it to the orchestrator and the benchmarks, and
a summary line goes to the server's log at most every ``LOG_EVERY_S`` while it changes.

Who calls: ``ElasticKV.ensure`` (scheduler thread) and the worker (``prepared``, under the
pool's lock). Times come from ``time.perf_counter`` passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from cumem_shim.types import MapCounts

LOG_EVERY_S = 30.0


@dataclass
class MapStats:
    prepared: int = 0  # blocks the worker mapped ahead
    adopted: int = 0  # prepared blocks the scheduler took (bookkeeping only)
    inline_blocks: int = 0  # blocks the scheduler mapped itself inside an allocation
    inline_s: float = 0.0  # seconds those maps took
    waits: int = 0  # allocations that waited for the block the worker was preparing
    wait_s: float = 0.0
    ensures: int = 0  # allocations that needed more blocks than were mapped
    _logged_at: float | None = None
    _logged: MapCounts | None = None

    def grew(self, inline_blocks: int, inline_s: float, waits: int, wait_s: float) -> None:
        """One allocation that needed more mapped blocks: what it mapped itself and how long
        it waited for the worker."""
        self.ensures += 1
        self.inline_blocks += inline_blocks
        self.inline_s += inline_s if inline_blocks else 0.0
        self.waits += 1 if waits else 0
        self.wait_s += wait_s if waits else 0.0

    def counts(self) -> MapCounts:
        return MapCounts(
            self.prepared,
            self.adopted,
            self.inline_blocks,
            round(self.inline_s, 6),
            self.waits,
            round(self.wait_s, 6),
            self.ensures,
        )

    def log_line(self, now: float) -> str | None:
        """A summary for the server's log when one is due (first change, then at most every
        ``LOG_EVERY_S`` while the counts move), else None."""
        counts = self.counts()
        if counts == self._logged:
            return None
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY_S:
            return None
        self._logged_at, self._logged = now, counts
        return (
            f"cumem_shim: map-ahead: {counts.prepared} block(s) prepared, {counts.adopted} "
            f"adopted; in allocations: {counts.inline_blocks} mapped on the scheduler "
            f"thread ({counts.inline_s * 1e3:.1f} ms), {counts.waits} wait(s) for the worker "
            f"({counts.wait_s * 1e3:.1f} ms), {counts.ensures} allocation(s) that grew the pool"
        )
