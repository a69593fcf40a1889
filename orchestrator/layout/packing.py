"""Warm-start layout: on which GPU group each model gets its (parked) server(s).

Every server is started once and parked at ``up`` (a cold start costs ~65 s, a wake ~0.4 s), so
this layout bounds what the global scheduler can later do: it wakes, parks and migrates among
these servers. Pure and greedy, biggest models first (then highest KV pressure):
- a server fits a group when every GPU can hold the CUDA contexts of all its servers plus the
  largest of them awake with its KV floor (any one model can always be woken alone);
- among groups that fit it picks the one that costs least in expected misses (colocation.py),
  as a share of all traffic: requests of its models that would miss their TPOT SLO because
  colocated servers time-slice the GPU (interference.py; with ``tpot_guard``), plus, for the
  share of the time the models that must be awake together overflow the GPU, the requests of
  the newcomer and of the GPU's models (they take turns: wakes, preemptions). Then, among
  groups within ``COST_STEP``: least memory overflow, lowest expected KV Pressure Ratio
  (Prism's rule), least decode load, least filled, lowest GPU;
- when and how much each model must be awake or decodes comes from ``awake_profile`` and
  ``activity_profile`` (profiles.py: measured on a history of requests) when given - models
  that take turns then share memory and rarely slow each other down - else from its expected
  awake share (``awake_share``: 1 - exp(-request rate x idle threshold)) and
  ``ModelDemand.activity`` (unknown: always decoding, tpot.py's worst case);
- ``replicas[m] > 1`` gives a model more servers on other groups (migration targets); TP ranks
  never share a GPU; ``round_robin=True`` ignores all of this and deals models to groups in
  turn, in the given order (the "global placement off" ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.layout.colocation import GpuPlan
from orchestrator.layout.interference import Member
from orchestrator.layout.profiles import Profiles
from orchestrator.policy.placement.cluster import ModelDemand
from orchestrator.types import GpuSharing

# A model whose awake footprint is above this share of a GPU counts as always awake in the
# plan unless its awake profile says when it is: its neighbours wake and park around it, not
# the other way round (its wake needs all of its memory at once, which idle-but-not-idle-enough
# neighbours would block).
BIG_FRACTION = 0.5
# A candidate group's cost is the share of all traffic expected to miss for it (colocation.py);
# costs closer than COST_STEP (1% of a 99% target's budget) count as equal, so that the decode
# load is balanced among the groups that cost (almost) nothing.
COST_STEP = 1e-4


@dataclass(frozen=True)
class Layout:
    servers: tuple[tuple[str, tuple[int, ...]], ...]  # (model, gpus), in placement order
    unplaced: tuple[str, ...]  # models with no server anywhere (not enough memory)


def layout(
    models: tuple[ModelDemand, ...],
    gpu_bytes: tuple[int, ...],
    *,
    awake_share: dict[str, float] | None = None,
    replicas: dict[str, int] | None = None,
    reserve_bytes: int = 0,
    round_robin: bool = False,
    tpot_guard: bool = True,
    awake_profile: dict[str, Sequence[float]] | None = None,
    activity_profile: dict[str, Sequence[float]] | None = None,
    sharing: GpuSharing = "timeslice",
) -> Layout:
    n = len(gpu_bytes)
    prof = Profiles(dict(awake_profile or {}), dict(activity_profile or {}))
    steps = max(prof.steps, 1)
    plans = [GpuPlan(float(b - reserve_bytes), prof, sharing) for b in gpu_bytes]
    total_rate = sum(m.token_rate for m in models) or 1.0
    share = awake_share or {}
    reps = replicas or {}
    order = (
        list(models)
        if round_robin
        else sorted(
            models, key=lambda m: (-(m.cost.awake_bytes + m.cost.kv_floor_bytes) * m.tp_size, -m.pressure, m.name)
        )
    )
    turn = 0
    # GPUs nothing was put on yet: blank groups of the same capacities score the same, and the
    # key's last term (the lowest GPU) makes the first of them win, so only it is scored
    blank = [True] * n
    servers: list[tuple[str, tuple[int, ...]]] = []
    unplaced: list[str] = []
    for m in order:
        c = m.cost
        wake = c.awake_bytes + c.kv_floor_bytes
        a = min(max(share.get(m.name, 1.0), 0.0), 1.0)
        if wake > BIG_FRACTION * min(p.cap for p in plans) and m.name not in prof.awake:
            a = 1.0  # a big model needs all of it at once: plan its neighbours around it awake
        awake = _series(prof.awake.get(m.name), a, steps)
        a = sum(awake) / steps
        peak = max(awake, default=0.0)  # its busiest step (GpuPlan.score's shortcut)
        member = _member(m) if tpot_guard and m.step_s > 0 else None
        used: set[int] = set()
        for _ in range(max(1, reps.get(m.name, 1))):
            best: tuple[tuple[float, ...], tuple[int, ...]] | None = None
            blank_seen: set[tuple[float, ...]] = set()  # capacities of the blank groups scored
            for grp in _groups(n, m.tp_size):
                if not used.isdisjoint(grp) or not all(plans[g].fits(m) for g in grp):
                    continue
                if round_robin:
                    key: tuple[float, ...] = (float((grp[0] - turn) % n),)
                else:
                    if _scored_blank(grp, blank, plans, blank_seen):
                        continue  # same key as a blank group before it, but a higher GPU
                    key = _key(m, grp, plans, awake, peak, a, member, total_rate)
                if best is None or key < best[0]:
                    best = (key, grp)
            if best is None:
                break
            grp = best[1]
            turn = (grp[-1] + 1) % n
            used.update(grp)
            servers.append((m.name, grp))
            for g in grp:
                plans[g].add(m, awake, a, member)
                blank[g] = False
            a, awake, member = 0.0, [0.0] * steps, None  # a replica is a standby: expected parked
            peak = 0.0
        if not used:
            unplaced.append(m.name)
    return Layout(tuple(servers), tuple(unplaced))


def _key(
    m: ModelDemand,
    grp: tuple[int, ...],
    plans: list[GpuPlan],
    awake: list[float],
    peak: float,
    a: float,
    member: Member | None,
    total_rate: float,
) -> tuple[float, ...]:
    """The order of a candidate group (module docstring)."""
    wake = m.cost.awake_bytes + m.cost.kv_floor_bytes
    scores = [plans[g].score(m, awake, member, peak) for g in grp]
    crowded = max(x.crowded for x in scores)
    util = max(x.load for x in scores)
    # while the models that must be awake overflow the GPU, they take turns (wakes, starvation
    # preemptions): the newcomer's requests and its neighbours' miss
    misses = sum(x.misses for x in scores) + crowded * (m.token_rate + max(plans[g].rate for g in grp))
    cost = misses / total_rate
    left = [plans[g].cap - plans[g].ctx - m.cost.parked_bytes - plans[g].hot - a * wake for g in grp]
    ratio = max((plans[g].pressure + a * m.pressure) / max(lf, 1.0) for g, lf in zip(grp, left, strict=True))
    fill = max((plans[g].hot + plans[g].ctx) / plans[g].cap for g in grp)
    return (float(round(cost / COST_STEP)), max(x.overflow for x in scores), ratio, util, fill, float(grp[0]))


def _scored_blank(grp: tuple[int, ...], blank: list[bool], plans: list[GpuPlan], seen: set[tuple[float, ...]]) -> bool:
    """Whether ``grp`` is blank (nothing on any of its GPUs) with the capacities of a blank group
    already scored for this server; records a first one. At 1,000 models on 512 GPUs most
    candidates of the first models are blank GPUs: this skips scoring all but one of them."""
    if not all(blank[g] for g in grp):
        return False
    caps = tuple(plans[g].cap for g in grp)
    if caps in seen:
        return True
    seen.add(caps)
    return False


def _series(profile: Sequence[float] | None, share: float, steps: int) -> list[float]:
    if profile is None:
        return [share] * steps
    return [min(max(x, 0.0), 1.0) for x in profile] + [0.0] * (steps - len(profile))


def _member(m: ModelDemand) -> Member:
    """Unknown activity counts as always decoding (tpot.py's worst case)."""
    return Member(m.name, m.step_s, m.activity if m.activity is not None else 1.0, m.tpot_slo_s, m.token_rate)


def _groups(n: int, tp: int) -> list[tuple[int, ...]]:
    return [tuple(range(i, i + tp)) for i in range(0, n - tp + 1, tp)]
