"""The few series of chimera's registry that the dashboard shows, read into plain dicts in one
pass (``read``), and the quantile of a cumulative histogram (``quantile``, as PromQL's
``histogram_quantile`` computes it). Reads only what ``GET /metrics`` exposes, so the page and
``/metrics`` cannot disagree."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from orchestrator.metrics import ChimeraMetrics
from orchestrator.metrics.registry import SERVER

SHED_STATUS = "429"  # admission shed the request (its TTFT deadline could not be met)

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending, ending at +Inf


@dataclass(frozen=True)
class Readings:
    requests: dict[str, float] = field(default_factory=dict)  # by model, every route and status
    shed: dict[str, float] = field(default_factory=dict)  # by model: status 429
    in_flight: dict[str, float] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)
    ttft: dict[str, Buckets] = field(default_factory=dict)  # by model
    tpot: dict[str, Buckets] = field(default_factory=dict)  # by model
    slo: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)  # model -> (slo, outcome)
    gpu_seconds: dict[str, float] = field(default_factory=dict)  # by model, every state
    kv_mapped_bytes: dict[str, float] = field(default_factory=dict)  # by instance id
    kv_used_tokens: dict[str, float] = field(default_factory=dict)  # by instance id
    host_bytes: dict[str, tuple[str, float]] = field(default_factory=dict)  # by instance id: (kind, bytes > 0)
    holds: dict[str, str] = field(default_factory=dict)  # pooled server's instance id -> model_path


def read(metrics: ChimeraMetrics) -> Readings:
    """The dashboard's series, read from each metric's children (``_fast``): rendering them
    through ``collect()`` costs ~10 ms at 58 models, most of a page load's budget. The children
    are prometheus_client's internals (stable since 0.4); if they ever move, the public
    ``collect()`` path (``_collected``) reads the same numbers (tests check that both agree)."""
    try:
        return _read(metrics, _fast)
    except AttributeError:
        return _read(metrics, _collected)


Values = list[tuple[tuple[str, ...], float | Buckets]]  # label values in the metric's order
Reader = Callable[[MetricWrapperBase, tuple[str, ...], bool], Values]


def _read(metrics: ChimeraMetrics, series: Reader) -> Readings:
    r = Readings()
    for (model, _route, status), value in series(metrics.requests, ("model", "route", "status"), False):
        assert isinstance(value, float)
        r.requests[model] = r.requests.get(model, 0.0) + value
        if status == SHED_STATUS:
            r.shed[model] = r.shed.get(model, 0.0) + value
    for (model,), value in series(metrics.in_flight, ("model",), False):
        assert isinstance(value, float)
        r.in_flight[model] = value
    for (model,), value in series(metrics.held, ("model",), False):
        assert isinstance(value, float)
        r.held[model] = value
    for (model,), buckets in series(metrics.ttft, ("model",), True):
        assert isinstance(buckets, list)
        r.ttft[model] = buckets
    for (model,), buckets in series(metrics.tpot, ("model",), True):
        assert isinstance(buckets, list)
        r.tpot[model] = buckets
    for (model, slo, outcome), value in series(metrics.slo, ("model", "slo", "outcome"), False):
        assert isinstance(value, float)
        r.slo.setdefault(model, {})[(slo, outcome)] = value
    for (model, _state), value in series(metrics.gpu_seconds, ("model", "state"), False):
        assert isinstance(value, float)
        r.gpu_seconds[model] = r.gpu_seconds.get(model, 0.0) + value
    for (_model, iid), value in series(metrics.kv_mapped, ("model", SERVER), False):
        assert isinstance(value, float)
        r.kv_mapped_bytes[iid] = value
    for (iid, _pool, path), value in series(metrics.server_holds, (SERVER, "pool", "model_path"), False):
        if value == 1.0:
            r.holds[iid] = path
    for (_model, iid), value in series(metrics.kv_used_tokens, ("model", SERVER), False):
        assert isinstance(value, float)
        r.kv_used_tokens[iid] = value
    for (_model, iid, kind), value in series(metrics.host_memory, ("model", SERVER, "kind"), False):
        assert isinstance(value, float)
        if value > 0:  # one kind at a time (metrics/host_memory.py)
            r.host_bytes[iid] = (kind, value)
    return r


def with_proxies(own: Readings, proxies: Iterable[Readings]) -> Readings:
    """``own`` with the request-path readings of the secondary proxy processes added (``up
    --proxies N``: requests, shed, in flight, TTFT and TPOT histograms, SLO counts), so the page
    shows every request whichever process served it, as ``/metrics`` does."""
    proxies = list(proxies)
    if not proxies:
        return own
    requests, shed, in_flight = dict(own.requests), dict(own.shed), dict(own.in_flight)
    ttft, tpot = dict(own.ttft), dict(own.tpot)
    slo = {m: dict(c) for m, c in own.slo.items()}
    for p in proxies:
        for mine, theirs in ((requests, p.requests), (shed, p.shed), (in_flight, p.in_flight)):
            for model, v in theirs.items():
                mine[model] = mine.get(model, 0.0) + v
        for mine_h, theirs_h in ((ttft, p.ttft), (tpot, p.tpot)):
            for model, buckets in theirs_h.items():
                mine_h[model] = _add_buckets(mine_h.get(model, []), buckets)
        for model, counts in p.slo.items():
            into = slo.setdefault(model, {})
            for key, v in counts.items():
                into[key] = into.get(key, 0.0) + v
    return replace(own, requests=requests, shed=shed, in_flight=in_flight, ttft=ttft, tpot=tpot, slo=slo)


def _add_buckets(a: Buckets, b: Buckets) -> Buckets:
    """Two cumulative histograms of the same bounds (one metric's, in two processes), added."""
    if not a:
        return list(b)
    if not b:
        return list(a)
    counts: dict[float, float] = {}
    for le, c in (*a, *b):
        counts[le] = counts.get(le, 0.0) + c
    return sorted(counts.items())


def _collected(metric: MetricWrapperBase, names: tuple[str, ...], histogram: bool) -> Values:
    """The public path: the samples ``GET /metrics`` renders (a counter's ``_total``, a
    histogram's cumulative ``_bucket`` series)."""
    out: dict[tuple[str, ...], float | Buckets] = {}
    for family in metric.collect():
        want = family.name + ("_bucket" if histogram else "_total" if family.type == "counter" else "")
        for s in family.samples:
            if s.name != want:
                continue
            key = tuple(s.labels[n] for n in names)
            if histogram:
                buckets = out.setdefault(key, [])
                assert isinstance(buckets, list)
                buckets.append((float(s.labels["le"]), s.value))
            else:
                out[key] = float(s.value)
    return list(out.items())


def _fast(metric: MetricWrapperBase, names: tuple[str, ...], histogram: bool) -> Values:
    """The same series from the children's values."""
    m: Any = metric  # the internals are untyped
    if tuple(m._labelnames) != names:
        raise AttributeError(f"{metric}: labels {m._labelnames}, expected {names}")
    with m._lock:
        children: list[tuple[tuple[str, ...], Any]] = list(m._metrics.items())
    if not histogram:
        # as the buckets below: the float read without its lock
        return [(key, float(child._value._value)) for key, child in children]
    out: Values = []
    for key, child in children:
        # each bucket's float read without its lock (one attribute read is atomic in CPython;
        # the lock would cost a third of the page's budget at 58 models)
        counts = accumulate(b._value for b in child._buckets)
        out.append((key, list(zip(child._upper_bounds, counts, strict=True))))
    return out


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
