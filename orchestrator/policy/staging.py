"""Which of a shape pool's checkpoints to keep in host RAM (page cache): pure, time passed in.

A pooled model with no server holding its weights is served by re-targeting a server
(``/update_weights_from_disk``), which reads the checkpoint: from the page cache at memory
speed, from disk at disk speed (docs/pools.md). Staging keeps the checkpoints most likely to
be asked next in the page cache, within the pool's ``stage_gb`` of host RAM.

Ranked by decayed popularity (the pool router's counts, policy/lora.py ``Popularity``):
checkpoints that no pool server holds first (a request for them reads the checkpoint), then
those a server holds (read again only once their server is re-targeted away), each by
popularity. The budget is filled greedily in that order; one that does not fit is skipped
for smaller ones after it. A staged checkpoint keeps its place against one that is at most
``STICKY`` times as popular (reading 16 GB back to gain nothing is what staging saves).
Checkpoints never asked for (popularity 0: no forecast) and those of no known size (not a
local directory: nothing to read) are not staged. A checkpoint staged less than ``MIN_STAGED_S``
ago keeps its place whatever the ranking says (it is dropped only once nobody asks for it): on
the H200, 50 models over 8 paths at about equal popularity had the stager read a 16 GB
checkpoint every ~3 s, each read competing with the switches' own (docs/pools.md). Within one
popularity half-life the ranking of near-equals is noise; a re-stage costs a whole read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

STICKY = 1.25  # a staged checkpoint is worth this much more than an unstaged one of equal popularity
MIN_STAGED_S = 60.0  # a staged checkpoint is kept at least this long (policy/lora.py's half-life)


@dataclass(frozen=True)
class Checkpoint:
    path: str  # the model_path a pooled model loads
    size_bytes: int  # its files on disk; 0: not a local directory
    popularity: float  # decayed request count now
    held: bool  # a pool server holds these weights on its GPU now
    staged_at: float | None = None  # when it was staged (None: it is not)


@dataclass(frozen=True)
class StagingPlan:
    stage: tuple[str, ...] = ()  # read into the page cache, most wanted first
    drop: tuple[str, ...] = ()  # let go (no longer wanted)
    wanted: tuple[str, ...] = ()  # what should be staged once the plan is done


def decide(checkpoints: Iterable[Checkpoint], staged: frozenset[str], budget_bytes: int, now: float) -> StagingPlan:
    if budget_bytes <= 0:
        return StagingPlan(drop=tuple(sorted(staged)))
    cands = [c for c in checkpoints if c.size_bytes > 0 and c.popularity > 0]

    def rank(c: Checkpoint) -> tuple[bool, bool, float, str]:
        worth = c.popularity * (STICKY if c.path in staged else 1.0)
        young = c.path in staged and c.staged_at is not None and now - c.staged_at < MIN_STAGED_S
        return (not young, c.held, -worth, c.path)

    left = budget_bytes
    wanted: list[str] = []
    for c in sorted(cands, key=rank):
        if c.size_bytes <= left:
            wanted.append(c.path)
            left -= c.size_bytes
    keep = set(wanted)
    return StagingPlan(
        stage=tuple(p for p in wanted if p not in staged),
        drop=tuple(sorted(p for p in staged if p not in keep)),
        wanted=tuple(wanted),
    )
