"""What the servers the warm-start layout puts on one GPU cost it, kept incrementally.

``GpuPlan`` answers, for a model the layout considers putting on its GPU:
- ``fits``: the GPU holds the CUDA contexts of all its servers plus the biggest awake alone;
- ``score``: on the caller's time profiles (profiles.py),
  - memory: by how much the models that must be awake *at the same time* overflow the GPU, on
    average over the profile, and for what share of the time (models whose on/off phases
    alternate share memory; a model without a profile counts with its expected awake share in
    every step);
  - TPOT: how many more requests are expected to miss their TPOT SLO there (interference.py,
    with neighbours' activity as seen by each model's requests: ``Profiles.kappa``);
  - load: the decode work offered to the GPU (sum of activities).
A score costs O(members x bins); ``add`` rebuilds the members' laws, O(members^2 x bins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.layout.interference import (
    Member,
    add,
    concurrency,
    inflate,
    inflated,
    law_of,
    miss,
    shift_of,
)
from orchestrator.layout.profiles import Profiles
from orchestrator.perf.sharing import decode_weight
from orchestrator.policy.placement.cluster import ModelDemand
from orchestrator.types import GpuSharing


@dataclass(frozen=True)
class Score:
    crowded: float  # share of the time the must-be-awake set overflows the GPU
    overflow: float  # mean overflow, as a share of the GPU
    misses: float  # expected extra TPOT misses, in the members' weight unit (token rate)
    load: float  # decode load after the add


class GpuPlan:
    def __init__(self, capacity: float, profiles: Profiles, sharing: GpuSharing = "timeslice") -> None:
        self.cap = capacity
        self.prof = profiles
        self.sharing = sharing  # how its servers share compute (interference.py)
        self.ctx = 0.0  # CUDA contexts of every server here
        self.biggest = 0.0  # the largest awake footprint (+ KV floor) of its servers
        self.hot = 0.0  # expected awake bytes
        self.hot_t = [0.0] * max(profiles.steps, 1)  # awake bytes per profile step
        self.hot_max = 0.0  # max(hot_t)
        self.pressure = 0.0  # expected KV pressure
        self.rate = 0.0  # token rate of its models
        self.members: list[Member] = []  # servers with decode work here
        self.act: list[float] = []  # their activities, inflated by the sharing
        self.laws: list[list[float]] = []  # law of the neighbours' decode work, per member

    def fits(self, m: ModelDemand) -> bool:
        c = m.cost
        return self.ctx + c.parked_bytes + max(self.biggest, c.awake_bytes + c.kv_floor_bytes) <= self.cap

    def score(
        self, m: ModelDemand, awake: Sequence[float], member: Member | None, awake_max: float | None = None
    ) -> Score:
        """``awake_max``: ``max(awake)`` when the caller knows it (the layout scores one model's
        profile on every GPU)."""
        wake = m.cost.awake_bytes + m.cost.kv_floor_bytes
        room = self.cap - self.ctx - m.cost.parked_bytes
        total = 0.0
        times = 0
        if len(awake) != len(self.hot_t):
            raise ValueError(f"awake profile of {len(awake)} steps, the plan has {len(self.hot_t)}")
        peak = max(awake, default=0.0) if awake_max is None else awake_max
        # no step can overflow when the busiest step plus the model's largest share fits (float
        # + and x are monotonic): the loop would add nothing
        if not self.hot_max + peak * wake <= room:  # (a NaN anywhere: the loop, as before)
            for h, share in zip(self.hot_t, awake, strict=True):
                if h + share * wake > room:
                    total += h + share * wake - room
                    times += 1
        steps = len(self.hot_t)
        crowded, overflow = times / steps, total / steps / self.cap
        if member is None or member.step_s <= 0:
            return Score(crowded, overflow, 0.0, self.load())
        kappa = self.prof.kappa
        others = sum(a * x.step_s for a, x in zip(self.act, self.members, strict=True))
        act = inflate(concurrency(member.activity), member.step_s, others * decode_weight(self.sharing))
        extra = 0.0
        for x, law in zip(self.members, self.laws, strict=True):
            after = add(law, act * kappa(x.name, member.name), shift_of(member, x, self.sharing))
            extra += x.weight * (miss(x, after) - miss(x, law))
        mine = law_of(
            member,
            [(x, a * kappa(member.name, x.name)) for x, a in zip(self.members, self.act, strict=True)],
            self.sharing,
        )
        extra += member.weight * miss(member, mine)
        return Score(crowded, overflow, extra, self.load() + member.activity)

    def add(self, m: ModelDemand, awake: Sequence[float], share: float, member: Member | None) -> None:
        c = m.cost
        wake = c.awake_bytes + c.kv_floor_bytes
        self.ctx += c.parked_bytes
        self.biggest = max(self.biggest, wake)
        self.hot += share * wake
        self.hot_t = [h + x * wake for h, x in zip(self.hot_t, awake, strict=True)]
        self.hot_max = max(self.hot_t, default=0.0)
        self.pressure += share * m.pressure
        self.rate += m.token_rate
        if member is not None and member.step_s > 0:
            self.members.append(member)
            self._rebuild()

    def load(self) -> float:
        return sum(x.activity for x in self.members)

    def _rebuild(self) -> None:
        kappa = self.prof.kappa
        self.act = inflated(self.members, self.sharing)
        self.laws = [
            law_of(
                x,
                [
                    (y, a * kappa(x.name, y.name))
                    for j, (y, a) in enumerate(zip(self.members, self.act, strict=True))
                    if j != i
                ],
                self.sharing,
            )
            for i, x in enumerate(self.members)
        ]
