"""What one instance needs, from SGLang's ``GET /v1/loads`` and the shim's status. Pure.

``/v1/loads`` (SGLang 0.5.17, srt/entrypoints/v1_loads.py + srt/managers/load_snapshot.py; the
sim answers the same): ``{"timestamp", "version", "accelerator", "num_accelerators", "loads":
[LoadSnapshot.to_dict(), one per DP rank]}`` with, per rank, ``num_running_reqs``,
``num_waiting_reqs``, ``num_waiting_uncached_tokens`` (prompt tokens still to prefill),
``num_used_tokens``, ``max_total_num_tokens``, ``gen_throughput`` (tokens/s) and more.

With the shim, SGLang's ``num_used_tokens`` is ``max_total − available − evictable`` and so
counts the slots the limit holds back as used: the shim's ``used_tokens`` is the truth and wins
when known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HORIZON_S = 5.0  # growth to provide for: the token rate over the next few re-splits


class LoadsError(ValueError):
    """A /v1/loads body that is not SGLang's shape (transient: the next scrape may be fine)."""


@dataclass(frozen=True)
class Load:
    running: int
    waiting: int
    waiting_tokens: int
    used_tokens: int
    capacity_tokens: int
    token_rate: float  # generated tokens per second

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0


def parse_loads(body: Any) -> Load:
    """Sum the per-rank snapshots of one ``/v1/loads`` answer."""
    if not isinstance(body, dict) or not isinstance(body.get("loads"), list):
        raise LoadsError(f"/v1/loads: expected an object with a `loads` list, got {body!r:.200}")
    keys = ("num_running_reqs", "num_waiting_reqs", "num_waiting_uncached_tokens",
            "num_used_tokens", "max_total_num_tokens")
    tot = dict.fromkeys(keys, 0)
    rate = 0.0
    for i, snap in enumerate(body["loads"]):
        if not isinstance(snap, dict):
            raise LoadsError(f"/v1/loads: loads[{i}] is not an object")
        for k in keys:
            v = snap.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, int):
                raise LoadsError(f"/v1/loads: loads[{i}].{k} = {v!r} is not an integer")
            tot[k] += v
        g = snap.get("gen_throughput", 0.0)
        rate += float(g) if isinstance(g, (int, float)) and not isinstance(g, bool) else 0.0
    return Load(tot["num_running_reqs"], tot["num_waiting_reqs"],
                tot["num_waiting_uncached_tokens"], tot["num_used_tokens"],
                tot["max_total_num_tokens"], rate)


def need_bytes(load: Load, token_bytes: int, shim_used_tokens: int | None = None,
               horizon_s: float = HORIZON_S) -> int:
    """Bytes of KV this instance wants now: tokens in use (the shim's count when known),
    queued prompt tokens, and its generation rate over the horizon."""
    used = load.used_tokens if shim_used_tokens is None else shim_used_tokens
    tokens = used + load.waiting_tokens + load.token_rate * horizon_s
    return int(tokens * token_bytes)
