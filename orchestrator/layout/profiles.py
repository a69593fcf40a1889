"""Demand over time, as the warm-start layout packs by it (layout.py, colocation.py).

A model's average request rate says how much memory and GPU time it needs, not *when*: two
models that are each busy half of the time fit in the memory of one if they take turns. The
caller measures, on a history of requests (yesterday's trace, the last hour), per model and
per profile step:
- ``awake_profile``: the share of the step it must be awake - it had a request within its idle
  threshold, so the global scheduler may not park it;
- ``activity_profile``: the share of the step it has requests running (alone, each taking the
  time one request takes on a dedicated GPU): 1 - exp(-rate x that time).
``Profiles.kappa(i, j)`` is how much likelier j is to decode while i has requests than on
average: 1 for independent models, ~0 for models whose on/off phases alternate, ~2 for two
models that are on together half of the time.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field


def awake_profile(arrivals: Sequence[float], idle_s: float, step_s: float, horizon_s: float) -> tuple[float, ...]:
    """Share of each ``step_s`` of [0, horizon) in which a model with these request arrival
    times must be awake: from each arrival until ``idle_s`` after it."""
    n = max(1, math.ceil(horizon_s / step_s))
    out = [0.0] * n
    end = -math.inf
    for t in sorted(arrivals):
        lo, hi = max(t, end), min(t + idle_s, horizon_s)
        end = max(end, t + idle_s)
        k = int(lo // step_s)
        while lo < hi and k < n:
            top = min(hi, (k + 1) * step_s)
            out[k] += (top - lo) / step_s
            lo, k = top, k + 1
    return tuple(min(x, 1.0) for x in out)


def activity_profile(arrivals: Sequence[float], alone_s: float, step_s: float, horizon_s: float) -> tuple[float, ...]:
    """Share of each ``step_s`` of [0, horizon) in which a model with these request arrival
    times has requests running, each taking ``alone_s``: 1 - exp(-rate x alone_s)."""
    n = max(1, math.ceil(horizon_s / step_s))
    counts = [0] * n
    for t in arrivals:
        if 0 <= t < horizon_s:
            counts[min(int(t // step_s), n - 1)] += 1
    return tuple(1 - math.exp(-k / step_s * alone_s) for k in counts)


@dataclass
class Profiles:
    """Per model: ``awake[m][t]`` and ``active[m][t]`` in [0, 1] over the same profile steps."""

    awake: dict[str, Sequence[float]] = field(default_factory=dict)
    active: dict[str, Sequence[float]] = field(default_factory=dict)
    _kappa: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {len(p) for p in (*self.awake.values(), *self.active.values())}
        if len(lengths) > 1:
            raise ValueError(f"profiles must have one length (got lengths {sorted(lengths)})")

    @property
    def steps(self) -> int:
        return max((len(p) for p in self.awake.values()), default=0)

    def kappa(self, i: str, j: str) -> float:
        """j's activity while i has requests, over j's mean activity (1: independent)."""
        key = (i, j)
        got = self._kappa.get(key)
        if got is None:
            a, b = self.active.get(i), self.active.get(j)
            got = 1.0
            if a is not None and b is not None:
                weight = sum(a)
                mean_b = sum(b) / len(b)
                if weight > 0 and mean_b > 0:
                    # the products in order, summed as before (same float); lengths are
                    # equal (checked at construction)
                    got = sum(map(operator.mul, a, b)) / weight / mean_b
            self._kappa[key] = got
        return got
