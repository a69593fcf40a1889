"""What the shim's pool did, counted on the SGLang scheduler thread. ``MapStats``: how many
blocks the map-ahead worker prepared and the scheduler adopted (no driver call), and how many
the scheduler had to map itself or wait for inside an allocation — the maps a request pays
for. ``ShrinkStats``: how shrinks drained — blocks quarantined (quarantine.py), token slots held
back from SGLang, victims given back, blocks unmapped (while tokens were in use: under load).
``ElasticKV`` owns one of each; ``status()`` carries them to the orchestrator and the
benchmarks, and a summary line of each goes to the server's log at most every ``LOG_EVERY_S``
while it changes.

Who calls: ``ElasticKV`` (scheduler thread) and the map-ahead worker (mapahead.py:
``prepared``, under the pool's lock). Times come from ``time.perf_counter`` passed in by the
caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cumem_shim.types import MapCounts, ShrinkCounts

LOG_EVERY_S = 30.0


@dataclass
class _LogGate:
    """Says when a summary is due: the first look, then at most every LOG_EVERY_S while the
    counts move."""

    at: float | None = None
    last: Any = None

    def due(self, counts: Any, now: float) -> bool:
        if counts == self.last or (self.at is not None and now - self.at < LOG_EVERY_S):
            return False
        self.at, self.last = now, counts
        return True


@dataclass
class MapStats:
    prepared: int = 0  # blocks the worker mapped ahead
    adopted: int = 0  # prepared blocks the scheduler took (bookkeeping only)
    inline_blocks: int = 0  # blocks the scheduler mapped itself inside an allocation
    inline_s: float = 0.0  # seconds those maps took
    waits: int = 0  # allocations that waited for the block the worker was preparing
    wait_s: float = 0.0
    ensures: int = 0  # allocations that needed more blocks than were mapped
    _gate: _LogGate | None = None

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
        self._gate = self._gate or _LogGate()
        if not self._gate.due(counts, now):
            return None
        return (
            f"cumem_shim: map-ahead: {counts.prepared} block(s) prepared, {counts.adopted} "
            f"adopted; in allocations: {counts.inline_blocks} mapped on the scheduler "
            f"thread ({counts.inline_s * 1e3:.1f} ms), {counts.waits} wait(s) for the worker "
            f"({counts.wait_s * 1e3:.1f} ms), {counts.ensures} allocation(s) that grew the pool"
        )


@dataclass
class ShrinkStats:
    victims: int = 0  # blocks quarantined now
    held_units: int = 0  # their free units held out of SGLang's free list now
    quarantined: int = 0  # blocks ever made victims
    released: int = 0  # victims given back
    unmapped: int = 0  # blocks unmapped by shrinks (victims and fully free blocks)
    unmapped_under_load: int = 0  # of those, while tokens were in use
    sweeps: int = 0  # reclaims: each a GPU sync (free_per_block)
    _gate: _LogGate | None = None

    def counts(self, page_size: int) -> ShrinkCounts:
        return ShrinkCounts(
            self.victims,
            self.held_units * page_size,
            self.quarantined,
            self.released,
            self.unmapped,
            self.unmapped_under_load,
            self.sweeps,
        )

    def log_line(self, now: float, page_size: int) -> str | None:
        """A summary for the server's log when one is due (as ``MapStats.log_line``), else
        None. Nothing before the first shrink."""
        counts = self.counts(page_size)
        if counts == ShrinkCounts():
            return None
        self._gate = self._gate or _LogGate()
        if not self._gate.due(counts, now):
            return None
        return (
            f"cumem_shim: shrink: {counts.victims} block(s) quarantined now holding back "
            f"{counts.held_tokens} free token slot(s); since start {counts.quarantined} "
            f"quarantined, {counts.released} given back, {counts.unmapped} unmapped "
            f"({counts.unmapped_under_load} under load), {counts.sweeps} sweep(s)"
        )
