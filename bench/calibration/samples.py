"""Samples for the calibration fits (bench/calibration/calibrate.py), from the client's per-request records.
Pure functions; times in seconds from the start of the run.

Every request that succeeded has three phases as the client saw them: prefill (sent -> first
token), decode (first token -> last token) and its lengths (prompt P, output O tokens).

- A **prefill sample** is a request whose prefill window overlapped no other request's prefill
  (of any model: the trace puts every model on one GPU), so its TTFT is one prefill of P tokens
  plus fixed costs. Regressors: P, the prefill's FLOPs (model.py's formula) and how many
  requests of the other models were decoding meanwhile (they share the GPU).
- A **decode sample** is a request with at least ``MIN_DECODE_TOKENS`` output tokens; its TPOT
  is the mean decode step over its decode window. Regressors, averaged over that window: the
  batch (requests of the same model decoding, itself included), their summed context (prompt +
  tokens generated so far, growing linearly through each request's own window), the prompt
  tokens of same-model prefills that started inside the window per decode step (SGLang runs a
  prefill between decode steps; decode waits), and the same two loads of the other models.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from bench.client.record import RequestRecord
from orchestrator.perf import calibration as cal
from orchestrator.shapes import ModelShape

MIN_DECODE_TOKENS = 8


@dataclass(frozen=True)
class Phase:
    model: str
    start: float
    end: float
    prompt: int
    output: int


def prefill_flops(shape: ModelShape, prompt: int, tp_size: int = 1) -> float:
    """FLOPs of one GPU for a prefill of ``prompt`` new tokens with no cached prefix (model.py:
    tokens x 2 x params plus causal attention, 4 x layers x q_dim x n x n/2)."""
    q_dim = shape.num_heads * shape.head_dim
    attention = 4.0 * shape.num_layers * q_dim * prompt * (prompt / 2)
    return (prompt * shape.flops_per_token + attention) / tp_size


def phases(records: Sequence[RequestRecord]) -> tuple[list[Phase], list[Phase]]:
    """(prefill windows, decode windows) of the requests that succeeded."""
    pre, dec = [], []
    for r in records:
        if not r.ok or r.ttft_s is None or r.e2e_s is None:
            continue
        first = r.sent_at_s + r.ttft_s
        pre.append(Phase(r.model, r.sent_at_s, first, r.prompt_tokens, r.output_tokens))
        dec.append(Phase(r.model, first, r.sent_at_s + r.e2e_s, r.prompt_tokens, r.output_tokens))
    return pre, dec


class _Index:
    """Phases sorted by start, to find those that can overlap a window without a full scan."""

    def __init__(self, phases: Sequence[Phase]) -> None:
        self.phases = sorted(phases, key=lambda p: p.start)
        self.starts = [p.start for p in self.phases]
        self.longest = max((p.end - p.start for p in self.phases), default=0.0)

    def near(self, lo: float, hi: float) -> list[Phase]:
        """Every phase that can overlap [lo, hi] or end inside it (and a few that do not)."""
        i = bisect.bisect_left(self.starts, lo - self.longest)
        j = bisect.bisect_right(self.starts, hi)
        return self.phases[i:j]


def _overlap(a: Phase, b: Phase) -> tuple[float, float] | None:
    lo, hi = max(a.start, b.start), min(a.end, b.end)
    return (lo, hi) if hi > lo else None


def _context_integral(d: Phase, lo: float, hi: float) -> float:
    """Integral over [lo, hi] of request ``d``'s context (prompt + tokens generated so far)."""
    rate = d.output / (d.end - d.start) if d.end > d.start else 0.0
    return d.prompt * (hi - lo) + rate * ((hi - d.start) ** 2 - (lo - d.start) ** 2) / 2


def prefill_samples(
    pre: Sequence[Phase], dec: Sequence[Phase], shapes: dict[str, ModelShape]
) -> dict[str, list[tuple[list[float], float]]]:
    """model -> [([1, P, FLOPs / peak, other-model decode batch], TTFT)] of isolated prefills
    (FLOPs / peak: seconds at 100% of the bf16 peak, so its coefficient is 1 / MFU)."""
    out: dict[str, list[tuple[list[float], float]]] = {}
    pre_index, dec_index = _Index(pre), _Index(dec)
    for p in pre:
        if p.end <= p.start or p.model not in shapes:
            continue
        if any(q is not p and _overlap(p, q) for q in pre_index.near(p.start, p.end)):
            continue
        other = sum(
            hi - lo
            for d in dec_index.near(p.start, p.end)
            if d.model != p.model
            for lo, hi in [_overlap(p, d) or (0.0, 0.0)]
        ) / (p.end - p.start)
        compute = prefill_flops(shapes[p.model], p.prompt) / cal.PEAK_BF16_FLOPS
        out.setdefault(p.model, []).append(([1.0, float(p.prompt), compute, other], p.end - p.start))
    return out


DECODE_REGRESSORS = (
    "one",
    "batch",
    "context_tokens",
    "prefill_tokens_per_step",
    "other_batch",
    "other_prefill_tokens_per_step",
)


def decode_samples(pre: Sequence[Phase], dec: Sequence[Phase]) -> dict[str, list[tuple[list[float], float]]]:
    """model -> [(regressors in DECODE_REGRESSORS order, TPOT)]."""
    out: dict[str, list[tuple[list[float], float]]] = {}
    pre_index, dec_index = _Index(pre), _Index(dec)
    for d in dec:
        span = d.end - d.start
        if d.output < MIN_DECODE_TOKENS or span <= 0:
            continue
        steps = d.output - 1
        batch = context = other_batch = 0.0
        for e in dec_index.near(d.start, d.end):
            ov = _overlap(d, e)
            if ov is None:
                continue
            if e.model == d.model:
                batch += (ov[1] - ov[0]) / span
                context += _context_integral(e, *ov) / span
            else:
                other_batch += (ov[1] - ov[0]) / span
        same = other = 0
        for p in pre_index.near(d.start, d.end):
            if d.start < p.end < d.end:  # its prefill ran (ended) inside this decode window
                if p.model == d.model:
                    same += p.prompt
                else:
                    other += p.prompt
        out.setdefault(d.model, []).append(
            ([1.0, batch, context, same / steps, other_batch, other / steps], span / steps)
        )
    return out
