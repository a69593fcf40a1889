"""From request records to numbers: throughput, latency percentiles, SLO attainment, goodput.

Definitions (seconds throughout; docs/bench-live.md "Definitions"):
- latency percentiles are over successful requests; percentiles interpolate linearly between
  order statistics (numpy's default, as sglang.bench_serving);
- TTFT attainment = requests that succeeded with TTFT <= their TTFT SLO / all requests sent;
  TPOT attainment likewise (a request of one output token has no TPOT and meets it); joint =
  both. A failed request is a miss of all three; a request without an SLO meets it if it succeeds;
- goodput = requests that met both SLOs per second of the run (and their output tokens per s);
- throughput = completed requests, and their prompt and output tokens, per second of the run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from bench.client.record import RequestRecord

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between order statistics (numpy.percentile's default)."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    xs = list(values)
    if not xs:
        return {"count": 0, "mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    return {
        "count": len(xs),
        "mean": sum(xs) / len(xs),
        **{f"p{p}": percentile(xs, p) for p in PERCENTILES},
        "max": max(xs),
    }


def meets_ttft(r: RequestRecord) -> bool:
    return r.ok and (r.slo_ttft_s is None or (r.ttft_s is not None and r.ttft_s <= r.slo_ttft_s))


def meets_tpot(r: RequestRecord) -> bool:
    return r.ok and (r.slo_tpot_s is None or r.tpot_s is None or r.tpot_s <= r.slo_tpot_s)


def meets_both(r: RequestRecord) -> bool:
    return meets_ttft(r) and meets_tpot(r)


def error_kind(r: RequestRecord) -> str:
    if r.status and r.status != 200:
        return f"HTTP {r.status}"
    return r.error.split(":", 1)[0][:60] or "unknown"


def summarize(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """The numbers of one group of requests (all, or one model's) over a run of ``duration_s``."""
    n = len(records)
    ok = [r for r in records if r.ok]
    good = [r for r in records if meets_both(r)]
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: 0.0)

    def share(k: int) -> float | None:
        return k / n if n else None

    return {
        "requests": n,
        "completed": len(ok),
        "failed": n - len(ok),
        "errors": dict(Counter(error_kind(r) for r in records if not r.ok)),
        "throughput": {
            "requests_per_s": per_s(len(ok)),
            "input_tokens_per_s": per_s(sum(r.prompt_tokens for r in ok)),
            "output_tokens_per_s": per_s(sum(r.output_tokens for r in ok)),
        },
        "latency_s": {
            "ttft": distribution(r.ttft_s for r in ok if r.ttft_s is not None),
            "tpot": distribution(r.tpot_s for r in ok if r.tpot_s is not None),
            "itl": distribution(x for r in ok for x in r.itl_s),
            "e2e": distribution(r.e2e_s for r in ok if r.e2e_s is not None),
        },
        "attainment": {
            "ttft": share(sum(map(meets_ttft, records))),
            "tpot": share(sum(map(meets_tpot, records))),
            "joint": share(len(good)),
        },
        "goodput": {
            "requests_per_s": per_s(len(good)),
            "output_tokens_per_s": per_s(sum(r.output_tokens for r in good)),
        },
    }


def summarize_run(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """Overall and per-model summaries plus the client's own lag."""
    models = sorted({r.model for r in records})
    lags = [r.send_lag_s for r in records]
    return {
        "duration_s": duration_s,
        "overall": summarize(records, duration_s),
        "per_model": {m: summarize([r for r in records if r.model == m], duration_s) for m in models},
        "client": {
            "send_lag_s": distribution(lags),
            "note": "how late requests left the client compared with their arrival "
            "time; a large lag means the load generator, not the server, "
            "was the bottleneck",
        },
    }
