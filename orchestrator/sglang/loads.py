"""The one reader of SGLang's ``GET /v1/loads`` body: its shape and field names are SGLang's.
Pure (no I/O, no clock: the time of a scrape is passed in).

The body (SGLang 0.5.17, srt/entrypoints/v1_loads.py + srt/managers/load_snapshot.py; the sim
answers the same): ``{"timestamp", "version", "accelerator", "num_accelerators", "loads":
[LoadSnapshot.to_dict(), one per DP rank]}`` with, per rank, ``num_running_reqs``,
``num_waiting_reqs``, ``num_waiting_uncached_tokens`` (prompt tokens still to prefill),
``num_used_tokens``, ``max_total_num_tokens``, ``gen_throughput`` (tokens/s) and more.
``parse_loads`` sums the ranks (``Load``): what the park's wait for idleness reads.

A scrape (``sample_from_loads``) also carries the tokens the instance processed since its
previous scrape = the growth of SGLang's cumulative counters ``total_prefill_uncached_tokens``
(prompt tokens) and ``decode_moments[5]`` (generated tokens); a server without the latter is
counted by ``gen_throughput`` (tokens/s) x the seconds between the two scrapes. The first sample
of an instance (awake again after a park, too) is only the baseline: its history, including the
readiness probe the supervisor sends, is not demand now. A counter that went down (a restart)
counts from zero.

With the shim, SGLang's ``num_used_tokens`` is ``max_total − available − evictable`` and so
counts the slots the limit holds back as used: the shim's ``used_tokens`` is the truth and wins
where the KV ledger knows it (kv/demand.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.sglang.api import LOADS
from orchestrator.types import LoadSample

_SUMMED = (
    "num_running_reqs",
    "num_waiting_reqs",
    "num_waiting_uncached_tokens",
    "num_used_tokens",
    "max_total_num_tokens",
)


class LoadsError(ValueError):
    """A /v1/loads body that is not SGLang's shape (transient: the next scrape may be fine)."""


@dataclass(frozen=True)
class Load:
    """One ``/v1/loads`` answer, summed over its DP ranks."""

    running: int
    waiting: int
    waiting_tokens: int
    used_tokens: int
    capacity_tokens: int
    token_rate: float  # generated tokens per second (gen_throughput)

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0


@dataclass(frozen=True)
class Counters:
    """What one scrape leaves for the next: its time and SGLang's cumulative counters."""

    at: float
    prefill_total: int | None
    generated_total: float | None


def parse_loads(body: Any) -> Load:
    """Sum the per-rank snapshots of one ``/v1/loads`` answer. Raises LoadsError for a body
    that is not SGLang's shape."""
    ranks = _ranks(body)
    tot = dict.fromkeys(_SUMMED, 0)
    rate = 0.0
    for i, snap in enumerate(ranks):
        for k in _SUMMED:
            v = snap.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, int):
                raise LoadsError(f"{LOADS.path}: loads[{i}].{k} = {v!r} is not an integer")
            tot[k] += v
        g = snap.get("gen_throughput", 0.0)
        rate += float(g) if isinstance(g, (int, float)) and not isinstance(g, bool) else 0.0
    return Load(
        tot["num_running_reqs"],
        tot["num_waiting_reqs"],
        tot["num_waiting_uncached_tokens"],
        tot["num_used_tokens"],
        tot["max_total_num_tokens"],
        rate,
    )


def sample_from_loads(instance_id: str, body: Any, at: float, previous: Counters | None) -> tuple[LoadSample, Counters]:
    """One ``/v1/loads`` answer -> a sample (and what to remember for the next one). Raises
    LoadsError for a body that is not SGLang's shape."""
    load = parse_loads(body)
    ranks = _ranks(body)
    prefill = _sum_optional(ranks, "total_prefill_uncached_tokens")
    generated = _generated(ranks)
    max_running = _sum_optional(ranks, "max_running_requests")
    tokens = 0.0
    if previous is not None:
        if prefill is not None and previous.prefill_total is not None:
            tokens += _growth(prefill, previous.prefill_total)
        if generated is not None:  # None before the first decode step: 0 so far
            tokens += _growth(generated, previous.generated_total or 0.0)
        else:
            tokens += load.token_rate * max(0.0, at - previous.at)
    sample = LoadSample(
        instance_id,
        at,
        load.running,
        load.waiting,
        load.waiting_tokens,
        load.used_tokens,
        load.capacity_tokens,
        max_running,
        tokens,
        load.token_rate,
    )
    return sample, Counters(at, prefill, generated)


def _ranks(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("loads"), list):
        raise LoadsError(f"{LOADS.path}: expected an object with a `loads` list, got {body!r:.200}")
    ranks: list[dict[str, Any]] = body["loads"]
    for i, snap in enumerate(ranks):
        if not isinstance(snap, dict):
            raise LoadsError(f"{LOADS.path}: loads[{i}] is not an object")
    return ranks


def _growth(now: float, before: float) -> float:
    return now - before if now >= before else now  # a counter that went down restarted


def _generated(ranks: list[dict[str, Any]]) -> float | None:
    """Generated tokens so far (``decode_moments[5]``, summed over ranks), None if unreported."""
    total = 0.0
    for snap in ranks:
        moments = snap.get("decode_moments")
        if not (
            isinstance(moments, list)
            and len(moments) >= 6
            and isinstance(moments[5], (int, float))
            and not isinstance(moments[5], bool)
        ):
            return None
        total += float(moments[5])
    return total


def _sum_optional(ranks: list[dict[str, Any]], key: str) -> int | None:
    """Sum of an integer field over the ranks; None when a rank lacks it (older servers)."""
    total = 0
    for snap in ranks:
        v = snap.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            return None
        total += v
    return total
