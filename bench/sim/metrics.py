"""Attainment of one simulated run (docs/bench-live.md "Definitions"): a request meets its SLO when it was served,
its TTFT <= the model's TTFT SLO and its TPOT <= the TPOT SLO. Shed and unfinished requests
are misses. TPOT = (finish - first token) / (output tokens - 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.sim.servers import SimModel, SimReq
from bench.sim.simulator import Counters


@dataclass
class RunResult:
    system: str
    gpus: int
    requests: int
    rate: float  # offered requests per second
    joint: float  # attainment, 0..1
    ttft_ok: float
    tpot_ok: float
    shed: int
    unfinished: int
    p50_ttft_s: float
    p99_ttft_s: float
    wall_s: float
    counters: dict[str, int] = field(default_factory=dict)
    per_model: dict[str, float] = field(default_factory=dict)  # joint attainment per model

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    system: str,
    gpus: int,
    reqs: Sequence[SimReq],
    models: dict[str, SimModel],
    duration_s: float,
    wall_s: float,
    counters: Counters,
) -> RunResult:
    n = len(reqs)
    ok_joint = ok_ttft = ok_tpot = shed = unfinished = 0
    ttfts: list[float] = []
    per: dict[str, list[int]] = {}
    for r in reqs:
        m = models[r.model]
        good = per.setdefault(r.model, [0, 0])
        good[1] += 1
        if r.shed:
            shed += 1
            continue
        if math.isnan(r.finish):
            unfinished += 1
            continue
        ttft = r.first - r.arrival
        tpot = (r.finish - r.first) / (r.output - 1) if r.output > 1 else 0.0
        ttfts.append(ttft)
        a, b = ttft <= m.ttft_slo, tpot <= m.tpot_slo
        ok_ttft += a
        ok_tpot += b
        if a and b:
            ok_joint += 1
            good[0] += 1
    ttfts.sort()
    return RunResult(
        system=system,
        gpus=gpus,
        requests=n,
        rate=n / duration_s if duration_s > 0 else 0.0,
        joint=ok_joint / n if n else 1.0,
        ttft_ok=ok_ttft / n if n else 1.0,
        tpot_ok=ok_tpot / n if n else 1.0,
        shed=shed,
        unfinished=unfinished,
        p50_ttft_s=_pct(ttfts, 0.50),
        p99_ttft_s=_pct(ttfts, 0.99),
        wall_s=wall_s,
        counters=asdict(counters),
        per_model={k: v[0] / v[1] for k, v in sorted(per.items())},
    )


def _pct(xs: Sequence[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else math.nan
