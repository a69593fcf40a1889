"""The dashboard's snapshot: a pure function of the Router's views, the deployment's facts, the
metrics read (readings.py), the history (history.py) and ``now``. Its JSON is what the page and
``chimera-orch status`` draw; its shape is documented by ``build``.

Memory per GPU is what chimera knows, not a measurement: each instance's share of its GPUs from
the deployment's costs (weights; runtime = CUDA context, graphs and activations), and its KV
pool: with cumem_shim, what the shim last reported mapped and in use (chimera_kv_mapped_bytes,
chimera_kv_used_tokens), else the fixed pool it was started with (use unknown). A parked
instance holds its context only; a stopped or failed one nothing. Host RAM: the weight backups
of instances that have parked (chimera_host_memory_bytes), by instance and per GPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orchestrator.dashboard.history import RECENT_MOVES, History
from orchestrator.dashboard.readings import Readings, quantile
from orchestrator.deployment import Deployment, InstanceFacts
from orchestrator.metrics.gpu_seconds import HOLDS_CONTEXT, HOLDS_WEIGHTS
from orchestrator.types import InstanceState, InstanceView, ModelView

S = InstanceState
MEMORY_KINDS = ("weights", "runtime", "kv_used", "kv_mapped")  # stacked in this order; then free


def build(
    models: Iterable[ModelView],
    dep: Deployment,
    readings: Readings,
    history: History,
    now: float,
) -> dict[str, Any]:
    """``{"now", "mode", "window_s", "gpus": [{"gpu", "capacity", "free", "parts": [[instance,
    model, kind, bytes], ...], "host": [[instance, model, kind, bytes], ...]}], "host": {"held",
    "parts": [[instance, model, kind, bytes], ...]}, "models": [{"name", "state", "instances": [{"id", "gpus",
    "state", "draining", "error"}], "requests", "in_flight", "held", "shed", "ttft": {"p50",
    "p99", "slo", "count"}, "tpot": {"p50", "p99", "slo", "count"}, "attainment": {"ttft",
    "tpot", "joint"}, "gpu_seconds", "wakes", "parks", "timeline": {instance: [[t, state],
    ...]}}], "decisions": [[t, message], ...]}``. An instance's state (and its timeline's) is
    ``draining`` while a plan drains it (awake, taking no new request; ``draining`` names the
    reason it will park for). Bytes and seconds; attainment the fraction of streamed requests
    read to their end that met the SLO; None where chimera has no figure yet. ``host``: pinned
    host RAM held by weight backups (kind ``parked_weights`` or ``retained_weights``,
    metrics/host_memory.py), in total and, per GPU, each rank's shard. ``holds``: ``{instance:
    {"model_path", "models": [...]}}``, what each shape pool's server holds and the pooled
    models with those weights."""
    views = list(models)
    # pooled models share their pool's servers: count each server once
    instances = list({i.id: i for m in views for i in m.instances}.values())
    return {
        "now": now,
        "mode": dep.mode,
        "window_s": history.window_s,
        "gpus": _gpus(instances, dep, readings),
        "host": _host(instances, dep, readings),
        "models": [_model(m, dep, readings, history) for m in views],
        "decisions": [[t, msg] for t, msg in history.decisions()],
        "holds": {
            iid: {"model_path": path, "models": [m.name for m in dep.config.models if m.pool and m.model_path == path]}
            for iid, path in sorted(readings.holds.items())
        },
    }


def _gpus(instances: list[InstanceView], dep: Deployment, r: Readings) -> list[dict[str, Any]]:
    capacity = dep.gpu_bytes
    gpus: dict[int, list[list[Any]]] = {g: [] for f in dep.instances.values() for g in f.spec.gpus}
    for v in instances:
        facts = dep.instances.get(v.id)
        if facts is None:
            continue
        parts = instance_memory(v.state, facts, r)
        for g in v.gpus:
            gpus.setdefault(g, []).extend([v.id, v.model, kind, b] for kind, b in parts if b > 0)
    host: dict[int, list[list[Any]]] = {g: [] for g in gpus}
    for v in instances:
        found = r.host_bytes.get(v.id)
        facts = dep.instances.get(v.id)
        if found is None or facts is None:
            continue
        for g in v.gpus:  # each GPU's rank keeps its own shard's backup
            host.setdefault(g, []).append([v.id, v.model, found[0], int(found[1]) // facts.spec.model.tp_size])
    out = []
    for g in sorted(gpus):
        held = sum(p[3] for p in gpus[g])
        out.append(
            {"gpu": g, "capacity": capacity, "free": max(0, capacity - held), "parts": gpus[g], "host": host.get(g, [])}
        )
    return out


def _host(instances: list[InstanceView], dep: Deployment, r: Readings) -> dict[str, Any]:
    """Host RAM held by weight backups (metrics/host_memory.py), in total and by instance."""
    parts: list[list[Any]] = []
    for v in instances:
        found = r.host_bytes.get(v.id)
        if found is not None:
            parts.append([v.id, v.model, found[0], int(found[1])])
    return {"held": sum(p[3] for p in parts), "parts": parts}


def instance_memory(state: InstanceState, f: InstanceFacts, r: Readings) -> list[tuple[str, int]]:
    """What one instance holds on each of its GPUs, by kind (module docstring); the parts sum
    to what GPU-seconds are billed for (metrics/gpu_seconds.py ``held_bytes``)."""
    if state not in HOLDS_CONTEXT:
        return []
    tp = f.spec.model.tp_size
    if state not in HOLDS_WEIGHTS:
        return [("runtime", f.cost.parked_bytes)]
    weights = f.spec.model.shape.weight_bytes // tp
    runtime = max(0, f.cost.held_awake_bytes - weights)
    if f.shim:
        mapped = int(r.kv_mapped_bytes.get(f.spec.id, f.start_limit_bytes))
        used = min(mapped, int(r.kv_used_tokens.get(f.spec.id, 0) * f.cost.kv_bytes_per_token))
    else:
        mapped, used = f.fixed_pool_bytes // tp, 0
    return [("weights", weights), ("runtime", runtime), ("kv_used", used), ("kv_mapped", mapped - used)]


def _model(m: ModelView, dep: Deployment, r: Readings, history: History) -> dict[str, Any]:
    name = m.spec.name
    facts = dep.models.get(name)
    buckets = r.ttft.get(name, [])
    tpot = r.tpot.get(name, [])
    slo = r.slo.get(name, {})
    timeline = {i.id: history.timeline(i.id) for i in m.instances}
    wakes: list[float] = []
    parks: list[float] = []
    for i in m.instances:
        wakes.extend(history.moves(i.id, S.WAKING.value))
        parks.extend(history.moves(i.id, S.PARKING.value))
    return {
        "name": name,
        "state": m.state.value,
        "instances": [
            {"id": i.id, "gpus": list(i.gpus), "state": i.shown_state, "draining": i.draining, "error": i.error}
            for i in m.instances
        ],
        "requests": int(r.requests.get(name, 0)),
        "in_flight": int(r.in_flight.get(name, 0)),
        "held": int(r.held.get(name, 0)),
        "shed": int(r.shed.get(name, 0)),
        "ttft": {
            "p50": quantile(0.5, buckets),
            "p99": quantile(0.99, buckets),
            "slo": facts.ttft_slo_s if facts else None,
            "count": int(buckets[-1][1]) if buckets else 0,
        },
        "tpot": {
            "p50": quantile(0.5, tpot),
            "p99": quantile(0.99, tpot),
            "slo": facts.tpot_slo_s if facts else None,
            "count": int(tpot[-1][1]) if tpot else 0,
        },
        "attainment": {k: _attainment(slo, k) for k in ("ttft", "tpot", "joint")},
        "gpu_seconds": r.gpu_seconds.get(name, 0.0),
        "wakes": wakes[-RECENT_MOVES:],
        "parks": parks[-RECENT_MOVES:],
        "timeline": timeline,
    }


def _attainment(counts: dict[tuple[str, str], float], slo: str) -> float | None:
    met, missed = counts.get((slo, "met"), 0.0), counts.get((slo, "missed"), 0.0)
    return met / (met + missed) if met + missed > 0 else None
