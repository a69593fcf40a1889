"""Migrations: move a model to another of its (parked) servers, Prism's KVPR rule plus chimera's
TPOT guard.

A move of model m from server A to its parked server B is worth it when either
- KV: the higher KV Pressure Ratio of the two groups drops by more than ``tau`` (relative), and
  B's group does not get a TPOT overflow from it; or
- TPOT (``tpot_guard``): A's group has decode rounds longer than a resident TPOT SLO
  (tpot.overflow > 0), the move shrinks that overflow and B's group stays at 0.
A TPOT fix wins over a KV gain. Only models with one resident server, not moved in the last
``migration_cooldown_s``, are moved; B must fit without parking anyone unless
``migration_parks_idle``. Steps: wake B, route traffic to B when ready, park A once drained.

What the move costs (movecost.py): B parked wakes from its backup in its node's host RAM; with
``cold_start`` a stopped server of the model (no backup anywhere, e.g. on another node than A)
may be B too, at a cold start's cost: it needs its CUDA context's memory as well, is chosen only
when no warm move qualifies, and starts B (``Start``) instead of waking it.
"""

from __future__ import annotations

import heapq

from orchestrator.policy.placement import tpot
from orchestrator.policy.placement.cluster import (
    ClusterView,
    Migration,
    ModelDemand,
    Park,
    Route,
    S,
    Start,
    Step,
    Wake,
)
from orchestrator.policy.placement.kvpr import GpuTally
from orchestrator.policy.placement.movecost import MoveCost, move_cost
from orchestrator.types import gpu_label

_SOURCES = 4  # source GPUs examined per trigger (the worst ones): bounds a decision at scale
_AWAKE, _PARKED, _STOPPED = S.AWAKE, S.PARKED, S.STOPPED  # read in hot loops: module constants


def best_migration(led: GpuTally, view: ClusterView, now: float, touched: set[str]) -> Migration | None:
    p = view.params
    n = len(view.gpu_bytes)
    ratios = led.ratios()
    # the highest ratios, ties by GPU id (nlargest is stable: sorted(..., reverse=True)[:k])
    srcs = [g for g in heapq.nlargest(_SOURCES, range(n), key=ratios.__getitem__) if ratios[g] > 0]
    if p.tpot_guard:
        # only GPUs that may overflow at all are measured: those that cannot have overflow 0,
        # which the filter below drops anyway
        over = [(tpot.gpu_overflow(led, g), g) for g in tpot.may_overflow(led)]
        srcs += [g for o, g in sorted(over, key=lambda x: (-x[0], x[1]))[:_SOURCES] if o > 0 and g not in srcs]
    best: tuple[tuple[int, int, float], str, str, list[str], str, MoveCost] | None = None
    for g in srcs:
        for src in sorted(led.on_gpu[g]):
            s = led.servers[src]
            m = led.models[s.model]
            if (
                s.model in touched
                or led.state[src] is not _AWAKE
                or m.pressure + m.step_s <= 0
                or len(led.resident(s.model)) != 1
                or _cooling(m, view, now)
            ):
                continue
            for dst in led.of_model[s.model]:
                if not (led.state[dst] is _PARKED or p.cold_start and led.state[dst] is _STOPPED):
                    continue
                cost = move_cost(view, m, s.gpus, led.servers[dst].gpus, led.state[dst])
                got = _score(led, view, now, src, dst, m, cost)
                if got is None:
                    continue
                key = (got[0][0], 0 if cost.cold else 1, got[0][1])  # a TPOT fix, then warm, then gain
                if best is None or key > best[0]:
                    best = (key, src, dst, got[1], got[2], cost)
    if best is None:
        return None
    (_, _, gain), src, dst, victims, why, cost = best
    model, gpus = led.servers[src].model, led.servers[dst].gpus
    for v in victims:
        led.set_state(v, S.PARKING)
    led.set_state(dst, S.STARTING if cost.cold else S.WAKING)
    led.set_state(src, S.PARKING)  # still holds its memory until drained; its traffic moves
    bring: Step = Start(model, gpus) if cost.cold else Wake(dst)
    steps: tuple[Step, ...] = (*[Park(v) for v in victims], bring, Route(model, gpus), Park(src))
    return Migration(model, src, gpus, steps, gain, f"{why} ({cost.describe()})")


def _score(
    led: GpuTally, view: ClusterView, now: float, src: str, dst: str, m: ModelDemand, cost: MoveCost
) -> tuple[tuple[int, float], list[str], str] | None:
    p = view.params
    a, b = led.servers[src].gpus, led.servers[dst].gpus
    victims = led.make_room(b, led.need_bytes(m, cold=cost.cold), now, frozenset({src}))
    if victims is None or (victims and not p.migration_parks_idle):
        return None
    where = f"GPU {gpu_label(a)} -> {gpu_label(b)}"
    if p.tpot_guard:
        dst_over = tpot.overflow(led, b, m, victims)
        if dst_over > 0:
            return None
        before = tpot.overflow(led, a)
        after = tpot.overflow(led, a, drop=[src])
        if before > 0 and after < before:
            return (
                (1, before - after),
                victims,
                (
                    f"{where}: decode rounds on GPU {gpu_label(a)} exceed a TPOT "
                    f"SLO by {before:.0%}, {after:.0%} after the move"
                ),
            )
    before_kv = max(led.group_ratio(a), led.group_ratio(b))
    if before_kv <= 0:
        return None
    after_kv = max(
        led.ratio_after(b, m, victims, cold=cost.cold, leaving=a), max(_ratio_without(led, g, m, b) for g in a)
    )
    gain = (before_kv - after_kv) / before_kv
    if gain <= p.tau:
        return None
    return (0, gain), victims, f"{where}: KVPR of the pair drops {gain:.0%} (> tau {p.tau:.0%})"


def _cooling(m: ModelDemand, view: ClusterView, now: float) -> bool:
    return m.last_moved_at is not None and now - m.last_moved_at < view.params.migration_cooldown_s


def _ratio_without(led: GpuTally, g: int, m: ModelDemand, dst_gpus: tuple[int, ...]) -> float:
    """Ratio of source GPU g once the model left and its server parked."""
    pressure = led.pressure[g] - m.pressure + (m.pressure if g in dst_gpus else 0.0)
    room = led.room[g] + m.cost.awake_bytes - (m.cost.awake_bytes if g in dst_gpus else 0)
    return max(pressure, 0.0) / max(room, 1.0)
