"""Elastic KV: split each GPU's KV memory among the servers resident there (docs/scheduling.md).

Per GPU, every resident server first gets what it must keep: max(its floor, KV in use). What is
left is shared in proportion to each awake model's KV pressure (token rate x KV bytes per token
/ TPOT SLO), equally when no model has any. A TP server gets the smallest of its GPUs' shares
(its ranks must hold the same number of tokens). When even the musts do not fit, they are
scaled down: a limit below what a server uses only stops it admitting until requests finish.
"""

from __future__ import annotations

from orchestrator.policy.placement.cluster import RESIDENT, KvLimit, S
from orchestrator.policy.placement.kvpr import GpuTally


def kv_limits(led: GpuTally) -> tuple[KvLimit, ...]:
    share: dict[str, float] = {}
    for g, sids in enumerate(led.on_gpu):
        members = sorted(sid for sid in sids if led.state[sid] in RESIDENT)
        if not members:
            continue
        budget = max(led.room[g], 0.0)
        must: dict[str, float] = {}
        weight: dict[str, float] = {}
        for sid in members:
            s = led.servers[sid]
            m = led.models[s.model]
            parking = led.state[sid] is S.PARKING
            must[sid] = float(s.kv_used_bytes) if parking else float(max(m.cost.kv_floor_bytes,
                                                                          s.kv_used_bytes))
            weight[sid] = 0.0 if parking else m.pressure
        total_must = sum(must.values())
        if total_must >= budget:
            scale = budget / total_must if total_must > 0 else 0.0
            alloc = {sid: must[sid] * scale for sid in members}
        else:
            extra = budget - total_must
            wsum = sum(weight.values())
            live = [sid for sid in members if led.state[sid] is not S.PARKING]
            alloc = {}
            for sid in members:
                if wsum > 0:
                    bonus = extra * weight[sid] / wsum
                else:
                    bonus = extra / len(live) if sid in live else 0.0
                alloc[sid] = must[sid] + bonus
        for sid, b in alloc.items():
            share[sid] = min(share.get(sid, b), b)
    out = []
    for sid in sorted(share):
        per_token = led.models[led.servers[sid].model].cost.kv_bytes_per_token
        tokens = int(share[sid] // max(per_token, 1))
        out.append(KvLimit(sid, tokens * per_token, tokens))
    return tuple(out)
