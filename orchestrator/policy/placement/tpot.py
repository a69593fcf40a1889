"""TPOT guard: colocated servers share their GPU's compute, so decode rounds add up.

Without MPS a GPU runs one process's kernels at a time: when k servers on a GPU all decode, a
token of each costs about the sum of their steps (one "round"); under MPS a neighbour's step
counts in part (``PlacementParams.sharing``, the factor owned by perf/sharing.py, applied once in
the charges: charges.py). A server's TPOT SLO then bounds the round of its GPU. KVPR (kvpr.py)
sees only memory; Prism's placement would happily put a 1B model (18 ms TPOT SLO) next to a 32B
one (30 ms steps). The guard measures, per GPU,
how far the round a model's requests see - its own step plus each neighbour's step times the
share of the time that neighbour decodes (``ModelDemand.activity``; unknown = always, the worst
case: every active model decoding at once) - exceeds that model's TPOT SLO, as a fraction of
the SLO, worst model first (0 = fine); placement prefers candidates that keep it at 0 and may
move a model to bring it back to 0. Only models that are actively decoding count: a neighbour
serving a request a minute barely lengthens the rounds. The layout weighs the same effect with
the full distribution of the round (interference.py); this mean is what a decision of the
global scheduler can afford at 1,000 models (bench/sim microbench).
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.policy.placement.cluster import ModelDemand, S
from orchestrator.policy.placement.kvpr import GpuTally, decoding

_ACTIVE = (S.AWAKE, S.WAKING, S.STARTING)
# module constants compared by identity in the loops: hashing an Enum member (a set lookup)
# calls Python code, and these loops run thousands of times a decision
_AWAKE, _WAKING, _STARTING = _ACTIVE
_NOTHING: frozenset[str] = frozenset()


def terms(m: ModelDemand, neighbour: float = 1.0) -> tuple[float, float, float, float]:
    """A model's terms in the guard's arithmetic: (step, step x decoding share - what it adds to
    a round, step x (1 - share) - what its own requests see beyond the round, TPOT SLO); under
    MPS what it adds is scaled by ``neighbour`` and the rest is the step less that (charges.py).
    ``GpuTally.charges`` holds them per model of the snapshot (its last four, computed once)."""
    share = decoding(m)
    if neighbour == 1.0:
        return m.step_s, m.step_s * share, m.step_s * (1.0 - share), m.tpot_slo_s
    added = m.step_s * share * neighbour
    return m.step_s, added, m.step_s - added, m.tpot_slo_s


def overflow(led: GpuTally, gpus: Iterable[int], add: ModelDemand | None = None, drop: Iterable[str] = ()) -> float:
    """Worst relative overflow of the expected round over a TPOT SLO among the active models of
    the group, with ``add`` made active there and the servers ``drop`` gone."""
    gone = set(drop) if drop else _NOTHING
    worst = 0.0
    state, servers, charges = led.state, led.servers, led.charges
    add_name: str | None = None
    add_step = added = add_rest = add_slo = 0.0
    known = True  # ``add`` is none or one of the snapshot's models
    if add is not None:
        add_name = add.name
        known = led.models.get(add_name) is add
        # a snapshot model's terms are its charge's; charging it also puts it in the bound below
        add_step, added, add_rest, add_slo = led.charges[add_name][5:] if known else terms(add, led.charges.neighbour)
    # Nothing dropped, ``add`` known and every SLO positive: a GPU whose round plus the largest
    # own-step term stays below the smallest SLO cannot overflow (may_overflow's bound, with
    # ``add`` counted in the round), so its members are not visited.
    rest_max, slo_min = led.charges.rest_max, led.charges.slo_min
    bounded = not gone and known and slo_min > 0
    for g in gpus:
        round_s = led.round_s[g] + added
        if bounded and round_s + rest_max < slo_min:
            continue
        # per active model: (step x (1 - share), SLO); its own step counts whole while it decodes
        members: list[tuple[float, float]] = [(add_rest, add_slo)] if add_step > 0 else []
        for sid in led.on_gpu[g]:
            st = state[sid]
            if not (st is _AWAKE or st is _WAKING or st is _STARTING):
                continue  # not in the round (and its model need not be charged)
            model = servers[sid].model
            _, _, _, _, _, step, decode, rest, slo = charges[model]
            if sid in gone:
                round_s -= decode
            elif step > 0 and model != add_name:
                members.append((rest, slo))
        for rest, slo in members:
            o = (round_s + rest - slo) / slo
            if o > worst:
                worst = o
    return worst


def bound(led: GpuTally, add: ModelDemand) -> tuple[float, float, float] | None:
    """(what ``add`` adds to a round, the largest own-step term, the smallest SLO) when
    ``overflow``'s bound applies to ``add`` with nothing dropped: then a GPU g with
    ``led.round_s[g] + added + rest_max < slo_min`` has ``overflow(led, (g,), add) == 0``.
    None when it does not apply (``add`` not the snapshot's, an SLO not positive)."""
    if led.models.get(add.name) is not add:
        return None
    added = led.charges[add.name][6]  # charging it first: the bound then counts it
    rest_max, slo_min = led.charges.rest_max, led.charges.slo_min
    return (added, rest_max, slo_min) if slo_min > 0 else None


def may_overflow(led: GpuTally) -> list[int]:
    """The GPUs with decode rounds (in id order) except those whose ``gpu_overflow`` is surely 0:
    the round plus the largest own-step term of any charged model stays below the smallest TPOT
    SLO of any charged model with a step (float addition is monotonic, so no member's ``seen``
    can exceed its SLO; every active server's model is charged: charges.py). Lets the migration
    policy skip most GPUs of a large fleet."""
    rest_max, slo_min = led.charges.rest_max, led.charges.slo_min
    return [g for g, r in enumerate(led.round_s) if r > 0 and r + rest_max >= slo_min]


def gpu_overflow(led: GpuTally, g: int) -> float:
    """``overflow(led, (g,))`` on one GPU as it stands (nothing added, nothing dropped): the
    migration policy asks it of every decoding GPU, so it skips the general case's bookkeeping.
    Same arithmetic in the same order, so the same floats."""
    round_s = led.round_s[g]
    worst = 0.0
    state, servers, charges = led.state, led.servers, led.charges
    for sid in led.on_gpu[g]:
        st = state[sid]
        if not (st is _AWAKE or st is _WAKING or st is _STARTING):
            continue
        _, _, _, _, _, step, _, rest, slo = charges[servers[sid].model]
        if step > 0:
            o = (round_s + rest - slo) / slo
            if o > worst:
                worst = o
    return worst
