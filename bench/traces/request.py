"""One benchmark request: when it arrives, for which model, how long, and its objectives.

Every time is in seconds (arrival times are relative to the start of the run). A trace is a
``list[BenchRequest]`` sorted by arrival time; generators and parsers return that and nothing
else, so a trace can be saved, compared and replayed anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class BenchRequest:
    id: int
    arrival_s: float  # seconds after the start of the run
    model: str  # a model name the proxy serves (a placements file's `name`)
    prompt_tokens: int
    output_tokens: int  # sent as max_tokens with ignore_eos: the exact output length
    slo_ttft_s: float | None = None  # None = no TTFT objective
    slo_tpot_s: float | None = None
    source: str = ""  # where it came from: "synthetic", "lmsys:m13", "azure_code:row 42"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchRequest:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def renumber(reqs: list[BenchRequest]) -> list[BenchRequest]:
    """Sort by arrival (stable) and number the requests 0..n-1."""
    ordered = sorted(reqs, key=lambda r: r.arrival_s)
    return [replace(r, id=i) for i, r in enumerate(ordered)]


def with_slos(
    reqs: list[BenchRequest], slos: dict[str, tuple[float | None, float | None]], scale: float = 1.0
) -> list[BenchRequest]:
    """Set each request's (TTFT, TPOT) objectives from its model's, times ``scale``. A model
    missing from ``slos`` keeps the request's own objectives."""
    out = []
    for r in reqs:
        if r.model not in slos:
            out.append(r)
            continue
        ttft, tpot = slos[r.model]
        out.append(
            replace(
                r, slo_ttft_s=None if ttft is None else ttft * scale, slo_tpot_s=None if tpot is None else tpot * scale
            )
        )
    return out
