"""SGLang answers for tests: a ``/v1/loads`` body."""

from __future__ import annotations

from typing import Any


def loads(
    prefill: int, generated: float | None, running: int = 2, gen_rate: float = 0.0, **extra: Any
) -> dict[str, Any]:
    """A one-rank body with SGLang's cumulative counters."""
    rank = {
        "num_running_reqs": running,
        "num_waiting_reqs": 1,
        "num_waiting_uncached_tokens": 40,
        "num_used_tokens": 900,
        "max_total_num_tokens": 10_000,
        "max_running_requests": 48,
        "gen_throughput": gen_rate,
        "total_prefill_uncached_tokens": prefill,
        "decode_moments": None if generated is None else [1, 1, 1, 1, 1, generated],
        **extra,
    }
    return {"timestamp": "t", "version": "0.5.17", "loads": [rank]}
