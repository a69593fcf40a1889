"""Prism's synthetic workload (benchmark/multi-model/trace.py ``generate_synthetic_reqs``),
re-implemented with the same semantics on the standard library's seeded generator:

- number of requests = int(rate x duration), drawn before any on/off filtering;
- model popularity: request i goes to model floor(N x X), X ~ Power(alpha) on [0, 1]
  (density alpha x^(alpha-1)), so model k (file order) gets ((k+1)/N)^alpha - (k/N)^alpha of the
  traffic: alpha > 1 favours later models, alpha < 1 earlier ones, alpha = 1 is uniform;
- arrival times: cumulative sums of Gamma inter-arrival gaps with shape 1/cv^2 and scale
  cv^2/rate (mean 1/rate, coefficient of variation cv; cv = 1 is Poisson);
- prompt and output lengths: uniform integers in [lo, hi) of their ranges (numpy's randint);
- on/off phases (optional): the last ``on_off_fraction`` of the models follow a cycle of
  ``cycle_s`` seconds whose first ``off_ratio`` part is off; model j of those is shifted by
  j / max(M // 2, 2) cycles; requests that fall in an off part are dropped.

Only the streams differ from Prism's numpy draws; a seed gives the same trace on every machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from bench.traces.request import BenchRequest


@dataclass(frozen=True)
class SyntheticSpec:
    rate: float = 2.0  # requests per second, over all models
    duration_s: float = 60.0
    alpha: float = 0.1  # Prism's default (the first model gets most requests)
    cv: float = 1.0
    input_range: tuple[int, int] = (8, 512)
    output_range: tuple[int, int] = (8, 512)
    seed: int = 42
    on_off_cycle_s: float = 0.0  # 0 = no on/off phases
    off_ratio: float = 0.5
    on_off_fraction: float = 0.0  # fraction of the models (the last ones) that follow on/off

    def check(self) -> None:
        problems = []
        if self.rate <= 0 or self.duration_s <= 0:
            problems.append("rate and duration must be > 0")
        if self.alpha <= 0:
            problems.append(f"alpha must be > 0 (got {self.alpha})")
        if self.cv < 0:
            problems.append(f"cv must be >= 0 (got {self.cv})")
        for name, (lo, hi) in (("input", self.input_range), ("output", self.output_range)):
            if lo < 1 or hi < lo:
                problems.append(f"{name} range must satisfy 1 <= lo <= hi (got {lo}, {hi})")
        if not 0 <= self.off_ratio <= 1 or not 0 <= self.on_off_fraction <= 1:
            problems.append("off_ratio and on_off_fraction must be in [0, 1]")
        if problems:
            raise ValueError("synthetic trace: " + "; ".join(problems))


def popularity(n_models: int, alpha: float) -> list[float]:
    """The share of requests of each model (file order) under Power(alpha) indexing."""
    return [((k + 1) / n_models) ** alpha - (k / n_models) ** alpha for k in range(n_models)]


def power_index(rng: random.Random, n_models: int, alpha: float) -> int:
    x = rng.random() ** (1.0 / alpha)  # inverse CDF of F(x) = x^alpha
    return min(int(x * n_models), n_models - 1)


def gamma_gaps(rng: random.Random, n: int, rate: float, cv: float) -> list[float]:
    if cv == 0:
        return [1.0 / rate] * n
    shape, scale = 1.0 / cv**2, cv**2 / rate
    return [rng.gammavariate(shape, scale) for _ in range(n)]


def uniform_len(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randrange(lo, hi) if hi > lo else lo


def _in_off_phase(t: float, j: int, m: int, cycle_s: float, off_ratio: float) -> bool:
    shift = j / max(m // 2, 2) * cycle_s
    return math.fmod(t + shift, cycle_s) < cycle_s * off_ratio


def generate(spec: SyntheticSpec, models: Sequence[str]) -> list[BenchRequest]:
    """The trace, sorted by arrival; ``models`` in placements-file order."""
    spec.check()
    if not models:
        raise ValueError("synthetic trace: no models to send requests to")
    rng = random.Random(spec.seed)
    n = int(spec.rate * spec.duration_s)
    idx = [power_index(rng, len(models), spec.alpha) for _ in range(n)]
    t, arrivals = 0.0, []
    for gap in gamma_gaps(rng, n, spec.rate, spec.cv):
        t += gap
        arrivals.append(t)
    inputs = [uniform_len(rng, *spec.input_range) for _ in range(n)]
    outputs = [uniform_len(rng, *spec.output_range) for _ in range(n)]
    m_on_off = int(len(models) * spec.on_off_fraction)
    on_off = list(models[len(models) - m_on_off :]) if m_on_off else []
    out: list[BenchRequest] = []
    for i in range(n):
        model = models[idx[i]]
        if (
            spec.on_off_cycle_s > 0
            and model in on_off
            and _in_off_phase(arrivals[i], on_off.index(model), len(on_off), spec.on_off_cycle_s, spec.off_ratio)
        ):
            continue
        out.append(
            BenchRequest(
                id=len(out),
                arrival_s=arrivals[i],
                model=model,
                prompt_tokens=inputs[i],
                output_tokens=outputs[i],
                source="synthetic",
            )
        )
    return out
