"""Decode interference between colocated servers: how often each one misses its TPOT SLO.

Without MPS a GPU runs one process's kernels at a time, so while several colocated servers
decode, a token of each costs about the sum of their steps (one *round*, tpot.py); under MPS a
neighbour's step counts in part: every neighbour's step below is scaled by
``perf.sharing.decode_weight(sharing)`` (1.0 under time-slicing, the default). tpot.py's
worst case has every neighbour decoding at once; a neighbour that serves a request a minute is
almost never decoding, though. With each model's *activity* known (``ModelDemand.activity``:
the share of time its server has requests running when it is alone on its GPU), the chance
that a request of model i meets a round longer than its TPOT SLO allows is

    miss_i = P(sum over neighbours j of B_j x step_j > TPOT SLO_i - step_i),  B_j ~ Bernoulli(p_ij)

- ``p_ij`` is j's activity inflated by the sharing itself - a request gets one token per round,
  so it stays (expected round / own step) times longer than alone: 1 - exp(-c_j x R_j /
  step_j), with c_j = -ln(1 - activity_j) its offered concurrency and R_j the expected round
  it sees - times ``kappa_ij``, how much likelier j is active when i is (1 for independent
  models, ~0 for models whose on/off phases alternate; profiles.py measures it);
- the law of the sum is an exact convolution over ``LAW_BINS`` bins of i's margin (the last bin
  holds everything beyond it), kept per member so that adding a neighbour costs O(bins).
The instantaneous round stands in for a request's TPOT, which averages the rounds over its
decode (conservative), and prefills - which stall every decode on the GPU - are left out
(optimistic: in a 17-GPU mix58 run, a GPU of eight 1B servers and a busy 8B one was predicted
to miss 0.6% of its 1B requests and missed 4.3%, mostly by under a millisecond).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.perf.sharing import decode_weight
from orchestrator.types import GpuSharing

LAW_BINS = 64  # resolution of a member's margin (TPOT SLO - own step)
_MAX_ACTIVITY = 0.999  # keeps -ln(1 - a) finite


@dataclass(frozen=True)
class Member:
    """One server that may decode on the GPU."""

    name: str
    step_s: float  # its decode step at its usual batch (0: no traffic)
    activity: float  # 0..1: share of time it has requests running when alone
    tpot_slo_s: float
    weight: float = 1.0  # what its misses count for (its request or token rate)

    @property
    def margin_s(self) -> float:
        return self.tpot_slo_s - self.step_s


Kappa = Callable[[str, str], float]  # kappa(i, j): j's activity seen by i's requests / j's mean


def _independent(_i: str, _j: str) -> float:
    return 1.0


def inflated(members: Sequence[Member], sharing: GpuSharing = "timeslice") -> list[float]:
    """Each member's chance to be decoding once slowed down by its neighbours (two passes)."""
    w = decode_weight(sharing)
    act = [min(max(m.activity, 0.0), 1.0) for m in members]
    conc = [-math.log(1 - min(a, _MAX_ACTIVITY)) for a in act]
    for _ in range(2):
        total = sum(a * m.step_s for a, m in zip(act, members, strict=True))
        act = [
            inflate(c, m.step_s, (total - a * m.step_s) * w) if m.step_s > 0 and a < 1.0 else a
            for a, c, m in zip(act, conc, members, strict=True)
        ]
    return act


def inflate(conc: float, step_s: float, others_s: float) -> float:
    """Activity of a server offered ``conc`` requests in flight (alone) whose steps take
    ``others_s`` longer on average because of its neighbours."""
    return 1 - math.exp(-conc * (step_s + others_s) / step_s)


def concurrency(activity: float) -> float:
    return -math.log(1 - min(max(activity, 0.0), _MAX_ACTIVITY))


def point() -> list[float]:
    """The law of 0 (nothing decodes beside the member)."""
    return [1.0] + [0.0] * LAW_BINS


def add(law: list[float], p: float, shift: int) -> list[float]:
    """The law of X + B x shift (in bins), B ~ Bernoulli(p); the last bin holds the overflow."""
    if p <= 0 or shift <= 0:
        return law
    p = min(p, 1.0)
    q = 1 - p
    out = [q * x for x in law]
    last = len(law) - 1
    for k, x in enumerate(law):
        if x:
            out[min(k + shift, last)] += p * x
    return out


def shift_of(neighbour: Member, of: Member, sharing: GpuSharing = "timeslice") -> int:
    """A neighbour's step (the share of it ``of`` waits for) in bins of ``of``'s margin."""
    if neighbour.step_s <= 0:
        return 0
    if of.margin_s <= 0:
        return LAW_BINS
    return math.floor(neighbour.step_s * decode_weight(sharing) / of.margin_s * LAW_BINS + 0.5)


def law_of(m: Member, neighbours: Sequence[tuple[Member, float]], sharing: GpuSharing = "timeslice") -> list[float]:
    """The law of the neighbours' decode work during a round of ``m`` (with their chances)."""
    law = point()
    for n, p in neighbours:
        law = add(law, p, shift_of(n, m, sharing))
    return law


def miss(m: Member, law: list[float]) -> float:
    """Chance that a round exceeds m's TPOT SLO while m decodes, given its neighbours' law."""
    if m.step_s <= 0:
        return 0.0
    return 1.0 if m.margin_s <= 0 else law[-1]


def miss_probs(
    members: Sequence[Member], kappa: Kappa = _independent, sharing: GpuSharing = "timeslice"
) -> list[float]:
    """For each member, the chance that a round exceeds its TPOT SLO while it decodes."""
    act = inflated(members, sharing)
    out = []
    for i, m in enumerate(members):
        others = [(n, act[j] * kappa(m.name, n.name)) for j, n in enumerate(members) if j != i]
        out.append(miss(m, law_of(m, others, sharing)))
    return out
