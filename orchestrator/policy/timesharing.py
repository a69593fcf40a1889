"""Time-sharing: which instances to park and which to wake, from one cluster snapshot.

Rules (design.md §3, §4; Prism's idle threshold study):
1. Warm start: an instance placed `on: false` is started with the others, then parked as soon
   as it is awake and idle (Prism's pre-initialized engines: ready to wake fast).
2. Wake on demand: a model with held requests and no instance awake or on its way wakes a
   parked instance, the one on the GPU(s) with the most room. If no GPU has room, idle awake
   neighbours are parked first (reason ``make_room``), longest idle and lowest priority first,
   preferring those past their idle threshold; the wake happens in a later round, once their
   memory is back. An instance with requests in flight or held is never parked.
3. Idle eviction: an awake instance idle for ``park_after_s`` is parked when ``park_when`` is
   ``always``; with ``needed`` only rule 2 parks it; ``never`` never.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.control.api import InstanceState
from orchestrator.policy.gpu_memory import held_bytes, room
from orchestrator.policy.types import ClusterSnapshot, InstanceSnapshot

S = InstanceState
_SERVING_OR_COMING = frozenset({S.PENDING, S.STARTING, S.AWAKE, S.WAKING})


@dataclass(frozen=True)
class TimeshareDecision:
    park: tuple[tuple[str, str], ...] = ()  # (instance id, reason: warm_start|make_room|idle)
    wake: tuple[str, ...] = ()


def decide(snap: ClusterSnapshot, now: float) -> TimeshareDecision:
    del now  # idle times arrive in the snapshot (idle_s)
    park: dict[str, str] = {}
    wake: list[str] = []
    free = room(snap.instances, snap.capacity)

    for inst in snap.instances:
        if inst.state is S.AWAKE and _idle(inst, snap):
            if inst.park_at_start:
                park[inst.id] = "warm_start"
            elif (inst.park_when == "always" and inst.park_after_s > 0
                  and inst.idle_s >= inst.park_after_s):
                park[inst.id] = "idle"

    by_model: dict[str, list[InstanceSnapshot]] = {}
    for inst in snap.instances:
        by_model.setdefault(inst.model, []).append(inst)
    for model, n in snap.waiting.items():
        group = by_model.get(model, [])
        if n <= 0 or any(i.state in _SERVING_OR_COMING for i in group):
            continue
        parked = [i for i in group if i.state is S.PARKED]
        if not parked:
            continue  # parking still, or never started: the start-up policy handles it
        best = max(parked, key=lambda i: (min(free.get(g, 0) for g in i.gpus), -i.order))
        need = best.footprint.awake_bytes - held_bytes(best)
        short = {g: need - free.get(g, 0) for g in best.gpus if need > free.get(g, 0)}
        if not short:
            wake.append(best.id)
            for g in best.gpus:
                free[g] = free.get(g, 0) - need
            continue
        coming = _coming_back(snap, park)  # memory of parks under way: wait for it
        short = {g: b - coming.get(g, 0) for g, b in short.items() if b > coming.get(g, 0)}
        if not short:
            continue
        victims = _victims(snap, best, short, park)
        for v in victims:
            park[v.id] = "make_room"
            for g in v.gpus:
                free[g] = free.get(g, 0) + v.footprint.awake_bytes - v.footprint.parked_bytes
    return TimeshareDecision(tuple(park.items()), tuple(wake))


def _coming_back(snap: ClusterSnapshot, parking: dict[str, str]) -> dict[int, int]:
    """Bytes per GPU that parks already under way (or decided this round) will free."""
    out: dict[int, int] = {}
    for i in snap.instances:
        if i.state is S.PARKING or i.id in parking:
            for g in i.gpus:
                out[g] = out.get(g, 0) + i.footprint.awake_bytes - i.footprint.parked_bytes
    return out


def _idle(inst: InstanceSnapshot, snap: ClusterSnapshot) -> bool:
    return inst.in_flight == 0 and snap.waiting.get(inst.model, 0) == 0


def _victims(snap: ClusterSnapshot, target: InstanceSnapshot, short: dict[int, int],
             already: dict[str, str]) -> list[InstanceSnapshot]:
    """Idle awake instances whose parking frees ``short`` bytes on each GPU, or [] if none can."""
    pool = [i for i in snap.instances
            if i.state is S.AWAKE and i.model != target.model and _idle(i, snap)
            and i.park_when != "never" and i.id not in already
            and not set(i.gpus).isdisjoint(short)]
    pool.sort(key=lambda i: (i.idle_s < i.park_after_s, i.priority, -i.idle_s, i.order))
    chosen: list[InstanceSnapshot] = []
    left = dict(short)
    for v in pool:
        if all(b <= 0 for b in left.values()):
            break
        gain = v.footprint.awake_bytes - v.footprint.parked_bytes
        if any(g in left and left[g] > 0 for g in v.gpus):
            chosen.append(v)
            for g in v.gpus:
                if g in left:
                    left[g] -= gain
    return chosen if all(b <= 0 for b in left.values()) else []
