"""The few series of chimera's registry that the dashboard shows, read into plain dicts in one
pass (``read``), and the quantile of a cumulative histogram (``quantile``, as PromQL's
``histogram_quantile`` computes it). Reads only what ``GET /metrics`` exposes, so the page and
``/metrics`` cannot disagree."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.metrics import MetricWrapperBase

from orchestrator.metrics import ChimeraMetrics

SHED_STATUS = "429"  # admission shed the request (its TTFT deadline could not be met)

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending, ending at +Inf


@dataclass(frozen=True)
class Readings:
    requests: dict[str, float] = field(default_factory=dict)  # by model, every route and status
    shed: dict[str, float] = field(default_factory=dict)  # by model: status 429
    in_flight: dict[str, float] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)
    ttft: dict[str, Buckets] = field(default_factory=dict)  # by model
    kv_mapped_bytes: dict[str, float] = field(default_factory=dict)  # by instance id
    kv_used_tokens: dict[str, float] = field(default_factory=dict)  # by instance id


def read(metrics: ChimeraMetrics) -> Readings:
    r = Readings()
    for s in _samples(metrics.requests, "_total"):
        model = s.labels["model"]
        r.requests[model] = r.requests.get(model, 0.0) + s.value
        if s.labels["status"] == SHED_STATUS:
            r.shed[model] = r.shed.get(model, 0.0) + s.value
    for s in _samples(metrics.in_flight, ""):
        r.in_flight[s.labels["model"]] = s.value
    for s in _samples(metrics.held, ""):
        r.held[s.labels["model"]] = s.value
    for s in _samples(metrics.ttft, "_bucket"):
        r.ttft.setdefault(s.labels["model"], []).append((float(s.labels["le"]), s.value))
    for s in _samples(metrics.kv_mapped, ""):
        r.kv_mapped_bytes[s.labels["instance"]] = s.value
    for s in _samples(metrics.kv_used_tokens, ""):
        r.kv_used_tokens[s.labels["instance"]] = s.value
    return r


def _samples(metric: MetricWrapperBase, suffix: str) -> list[_Sample]:
    out: list[_Sample] = []
    for family in metric.collect():
        name = family.name + suffix
        out.extend(_Sample(s.labels, s.value) for s in family.samples if s.name == name)
    return out


@dataclass(frozen=True)
class _Sample:
    labels: dict[str, str]
    value: float


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly inside its bucket
    (PromQL's ``histogram_quantile``); None without observations. A quantile in the +Inf bucket
    is the largest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
