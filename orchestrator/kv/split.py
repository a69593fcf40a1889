"""Splitting one GPU's KV budget among its resident instances, and phasing the change so the
GPU is never over-committed. Pure: no clock, no I/O, no logging (a test checks the imports).

``split`` (what each instance should get):
1. every instance gets its floor (``kv_floor_gb``, at least one shim block);
2. then what it needs now (tokens in use + queued prompt tokens + its token rate over the
   horizon, in bytes), shared by priority-weighted water-filling when the budget is short;
3. what is left goes out in proportion to need plus an idle share, so an idle model keeps some
   room for its next burst; nobody passes its ceiling (``kv_pool_gb``, the virtual pool).
Limits are whole blocks (the shim maps no less). If the floors alone do not fit, they are
granted by priority and the plan says so (``short_bytes``).

``phase`` (what to send now): shrinks go out at once; a grow is granted only out of memory
that is free now, counting each instance at max(mapped, limit), because a shrinking instance
holds its pages until its tokens free. So Σ max(mapped, limit) never rises above the budget.
Grows are served least served first (``grow_order``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

IDLE_SHARE = 0.05  # of the budget: leftover weight every instance gets, busy or not
PRIORITY_WEIGHT = 2.0  # each priority level doubles an instance's claim when memory is short


@dataclass(frozen=True)
class Member:
    """One resident instance as the split sees it (all sizes in bytes, on this GPU)."""

    id: str
    need: int  # bytes it wants now (Demand.need_bytes)
    floor: int  # kept whatever others need (kv_floor_gb; at least one block)
    ceiling: int  # never more (kv_pool_gb or the virtual pool)
    block: int  # the shim's block size: limits are multiples of it
    priority: int = 0


@dataclass(frozen=True)
class Split:
    limits: dict[str, int]
    short_bytes: int  # > 0: the floors alone exceed the budget by this much


def waterfill(amount: float, caps: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Share ``amount`` in proportion to ``weights``, nobody above its cap; what a capped
    member cannot take goes to the others. Returns shares summing to min(amount, Σ caps)."""
    out = [0.0] * len(caps)
    open_ = [i for i, c in enumerate(caps) if c > 0]
    left = max(0.0, amount)
    while open_ and left > 1e-9:
        wsum = sum(max(weights[i], 0.0) for i in open_)
        shares = {i: left * (max(weights[i], 0.0) / wsum if wsum > 0 else 1 / len(open_)) for i in open_}
        capped = [i for i in open_ if out[i] + shares[i] >= caps[i]]
        if not capped:
            for i in open_:
                out[i] += shares[i]
            break
        for i in capped:
            left -= caps[i] - out[i]
            out[i] = caps[i]
        open_ = [i for i in open_ if i not in capped]
    return out


def split(budget: int, members: Sequence[Member]) -> Split:
    if not members:
        return Split({}, 0)
    budget = max(0, budget)
    ceil = [max(m.ceiling // m.block * m.block, m.block) for m in members]
    floor = [min(-(-max(m.floor, m.block) // m.block) * m.block, c) for m, c in zip(members, ceil, strict=True)]
    prio = [PRIORITY_WEIGHT**m.priority for m in members]
    short = max(0, sum(floor) - budget)
    if short:  # floors by priority, then order of the file
        got = waterfill(budget, floor, [p * f for p, f in zip(prio, floor, strict=True)])
        return Split(_blocks(members, got), short)
    need = [min(max(m.need, f), c) for m, f, c in zip(members, floor, ceil, strict=True)]
    left = budget - sum(floor)
    extra = waterfill(
        left,
        [n - f for n, f in zip(need, floor, strict=True)],
        [p * max(n - f, 1) for p, n, f in zip(prio, need, floor, strict=True)],
    )
    got = [f + e for f, e in zip(floor, extra, strict=True)]
    rest = budget - sum(got)
    idle = IDLE_SHARE * budget
    more = waterfill(
        rest, [c - g for c, g in zip(ceil, got, strict=True)], [p * (n + idle) for p, n in zip(prio, need, strict=True)]
    )
    return Split(_blocks(members, [g + m for g, m in zip(got, more, strict=True)]), 0)


def _blocks(members: Sequence[Member], shares: Sequence[float]) -> dict[str, int]:
    return {m.id: max(m.block, int(s) // m.block * m.block) for m, s in zip(members, shares, strict=True)}


def phase(
    budget: int,
    targets: Mapping[str, int],
    current: Mapping[str, int],
    mapped: Mapping[str, int],
    order: Sequence[str] = (),
) -> dict[str, int]:
    """Limits to send now. ``current``: limits in force; ``mapped``: physical bytes each
    instance holds (from the shim's status). Grows are served in ``order`` (default: by id)
    out of what is free while every instance holds max(mapped, limit)."""
    send = {i: (t if t <= current.get(i, 0) else current.get(i, 0)) for i, t in targets.items()}
    held = sum(max(mapped.get(i, 0), send[i]) for i in send)
    free = budget - held
    growers = [i for i in (list(order) + sorted(targets)) if targets[i] > send[i]]
    for i in dict.fromkeys(growers):
        if free <= 0:
            break
        before = max(mapped.get(i, 0), send[i])
        send[i] = min(targets[i], send[i] + max(0, free) + max(0, mapped.get(i, 0) - send[i]))
        free -= max(mapped.get(i, 0), send[i]) - before
    return send


def grow_order(
    targets: Mapping[str, int], current: Mapping[str, int], mapped: Mapping[str, int], priority: Mapping[str, int]
) -> list[str]:
    """The order ``phase`` serves grows in: higher priority first, then the least served (what
    an instance holds, max(limit, mapped), over its target), then id. Served by id alone, memory
    freed by a shrink went first to the growers whose names sort first: on the H200 (set-up A,
    32 req/s, docs/benchmarks.md "Seventh runs") qwen-7b, last by name, stayed at 224 MiB through
    20 s of its burst while llama-1b-a and llama-3b-b grew. It also keeps a draining neighbour
    (mapped above its limit) from growing back into the pages it still maps while a less served
    grower waits: that grow costs nothing here, but it hands the shim's quarantined blocks back
    (cumem_shim/quarantine.py) and the drain starts over."""

    def served(i: str) -> float:
        return max(current.get(i, 0), mapped.get(i, 0)) / max(targets[i], 1)

    return sorted(targets, key=lambda i: (-priority.get(i, 0), served(i), i))


def changed(new: int, old: int | None, block: int, hysteresis: float = 0.05) -> bool:
    """Worth sending: a first limit, a shrink or grow of more than ``hysteresis`` of the old
    limit and at least one block (avoids revision churn every second)."""
    if old is None:
        return True
    return abs(new - old) >= max(block, hysteresis * old)
