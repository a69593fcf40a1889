"""TPOT guard: colocated servers time-slice their GPU, so decode rounds add up.

Without MPS a GPU runs one process's kernels at a time: when k servers on a GPU all decode, a
token of each costs about the sum of their steps (one "round"). A server's TPOT SLO then
bounds the round of its GPU. KVPR (kvpr.py) sees only memory; Prism's placement would happily
put a 1B model (18 ms TPOT SLO) next to a 32B one (30 ms steps). The guard measures, per GPU,
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
_ACTIVE_SET = frozenset(_ACTIVE)


def overflow(led: GpuTally, gpus: Iterable[int], add: ModelDemand | None = None, drop: Iterable[str] = ()) -> float:
    """Worst relative overflow of the expected round over a TPOT SLO among the active models of
    the group, with ``add`` made active there and the servers ``drop`` gone."""
    gone = set(drop)
    worst = 0.0
    state, servers, models = led.state, led.servers, led.models
    added = add.step_s * decoding(add) if add is not None else 0.0
    for g in gpus:
        round_s = led.round_s[g] + added
        members: list[ModelDemand] = [add] if add is not None and add.step_s > 0 else []
        for sid in led.on_gpu[g]:
            m = models[servers[sid].model]
            if sid in gone:
                if state[sid] in _ACTIVE_SET:
                    round_s -= m.step_s * decoding(m)
                continue
            if state[sid] in _ACTIVE_SET and m.step_s > 0 and (add is None or m.name != add.name):
                members.append(m)
        for m in members:  # its own step counts whole while it decodes
            seen = round_s + m.step_s * (1.0 - decoding(m))
            o = (seen - m.tpot_slo_s) / m.tpot_slo_s
            if o > worst:
                worst = o
    return worst


def gpu_overflow(led: GpuTally, g: int) -> float:
    """``overflow(led, (g,))`` on one GPU as it stands (nothing added, nothing dropped): the
    migration policy asks it of every decoding GPU, so it skips the general case's bookkeeping.
    Same arithmetic in the same order, so the same floats."""
    round_s = led.round_s[g]
    worst = 0.0
    state, servers, models = led.state, led.servers, led.models
    for sid in led.on_gpu[g]:
        if state[sid] not in _ACTIVE_SET:
            continue
        m = models[servers[sid].model]
        step = m.step_s
        if step > 0:
            seen = round_s + step * (1.0 - decoding(m))
            slo = m.tpot_slo_s
            o = (seen - slo) / slo
            if o > worst:
                worst = o
    return worst
