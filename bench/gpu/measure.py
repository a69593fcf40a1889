"""What the one-GPU experiment measures beyond the client's records (bench/report/summary.py):
chimera's counters over one rate of the sweep (wakes, parks, held and shed requests), the time
instances spent parked, the requests a system does not serve, a digest that proves two systems
were sent the same trace, and the highest rate at 99% attainment. Pure functions of text and
records; no clock, no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from bench.client.record import RequestRecord
from bench.client.server import chimera_families
from bench.traces.request import BenchRequest

TARGET = 0.99
UNSERVED = "unserved: this system does not place the model (a miss)"
# Every request passes through chimera's holds (chimera_hold_seconds counts them all); one held
# longer than this waited for its model to wake or start (a bucket bound of that histogram).
HELD_LE = "0.05"


def counters(text: str) -> dict[str, float]:
    """Sample name{labels} -> value of chimera's counters and histogram counts in /metrics."""
    out: dict[str, float] = {}
    for fam in chimera_families(text):
        if fam.type not in ("counter", "histogram", "unknown"):
            continue
        for s in fam.samples:
            if s.name.endswith(("_total", "_count")) or (
                s.name == "chimera_hold_seconds_bucket" and s.labels.get("le") == HELD_LE
            ):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _sum(c: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        v
        for k, v in c.items()
        if k.split("{", 1)[0] == name and all(w in k.split("{", 1)[1].rstrip("}").split(",") for w in want)
    )


def chimera_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Wakes, parks (by reason), held and shed (429) requests between two scrapes."""

    def d(name: str, **labels: str) -> float:
        return _sum(after, name, **labels) - _sum(before, name, **labels)

    reasons = sorted(
        {
            k.split("reason=", 1)[1].split(",")[0].rstrip("}")
            for k in after
            if k.startswith("chimera_parks_total{") and "reason=" in k
        }
    )
    return {
        "wakes": int(d("chimera_wake_seconds_count")),
        "parks": int(d("chimera_parks_total")),
        "parks_by_reason": {r: int(d("chimera_parks_total", reason=r)) for r in reasons},
        "held": int(d("chimera_hold_seconds_count") - d("chimera_hold_seconds_bucket", le=HELD_LE)),
        "shed_429": int(d("chimera_requests_total", status="429")),
    }


def time_parked(snapshots: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Seconds each instance was parked, from /metrics snapshots (``t_s``, ``states``): each
    interval between two snapshots counts for the state seen at its start."""
    out: dict[str, float] = {}
    for a, b in zip(snapshots, snapshots[1:], strict=False):
        dt = b["t_s"] - a["t_s"]
        for iid, st in a.get("states", {}).items():
            out.setdefault(iid, 0.0)
            if st.get("state") == "parked":
                out[iid] += dt
    return out


KV_SERIES = {
    "chimera_kv_limit_bytes": "limit_mib",
    "chimera_kv_mapped_bytes": "mapped_mib",
    "chimera_kv_used_tokens": "used_tokens",
    "chimera_kv_need_bytes": "need_mib",
    "chimera_kv_target_bytes": "target_mib",
}


def kv_timeline(snapshots: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Each instance's KV over a rate, from /metrics snapshots (``t_s``, ``gauges``): its shim's
    limit and mapped MiB and its used token slots at each poll, and the KV ledger's need and
    target for it (elastic modes; empty without the shim). What the KV ledger gave each model
    while the requests came, next to why they waited."""
    out: dict[str, list[dict[str, float]]] = {}
    for snap in snapshots:
        per: dict[str, dict[str, float]] = {}
        for key, value in snap.get("gauges", {}).items():
            name, _, labels = key.partition("{")
            field = KV_SERIES.get(name)
            if field is None:
                continue
            server = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(",") if "=" in kv).get("server")
            if server is not None:
                per.setdefault(server, {})[field] = round(value / 2**20, 1) if field.endswith("_mib") else value
        for server, fields in per.items():
            out.setdefault(server, []).append({"t_s": round(snap["t_s"], 2), **fields})
    return out


def unserved(reqs: Sequence[BenchRequest], run: int, route: str) -> list[RequestRecord]:
    """Records of requests not sent because the system does not serve their model: misses."""
    return [
        RequestRecord(
            id=r.id,
            model=r.model,
            route=route,
            arrival_s=r.arrival_s,
            sent_at_s=r.arrival_s,
            error=UNSERVED,
            prompt_tokens=r.prompt_tokens,
            prompt_tokens_requested=r.prompt_tokens,
            output_tokens_requested=r.output_tokens,
            slo_ttft_s=r.slo_ttft_s,
            slo_tpot_s=r.slo_tpot_s,
            run=run,
        )
        for r in reqs
    ]


def digest(reqs: Sequence[BenchRequest]) -> str:
    """The same for two traces exactly when they ask the same of the same models at the same times."""
    h = hashlib.sha256()
    for r in reqs:
        h.update(
            f"{r.id},{r.arrival_s:.6f},{r.model},{r.prompt_tokens},{r.output_tokens},"
            f"{r.slo_ttft_s},{r.slo_tpot_s};".encode()
        )
    return h.hexdigest()[:16]


def max_rate_at(points: Sequence[tuple[float, float | None]], target: float = TARGET) -> float | None:
    """The highest offered rate of the sweep at or under which every swept rate attains
    ``target`` (None when the lowest does not): attainment is taken as monotone in the rate,
    so a lucky point above a miss does not count."""
    best = None
    for rate, att in sorted(points):
        if att is None or att < target:
            break
        best = rate
    return best
