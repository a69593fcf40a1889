"""Whether a wake goes ahead while the memory it needs is not free yet (control/plans.py's wake
gate, docs/scheduling.md "What runs live").

A parked server's resume maps its weights at once; its neighbours' KV pages free only as their
tokens do. So a wake waits while its room is short (``short_bytes`` > 0, from the KV ledger:
kv/room.py), and the ledger shrinks and flushes the neighbours meanwhile. The wait is bounded
by ``wait_s``: past it the plan is *abandoned*, not forced. Forcing it would risk CUDA
out-of-memory in the resume (the server fails, restarts cold into the same full GPU) or in a
neighbour's next allocation (the neighbour fails with every request it serves); abandoned, the
plan gives its claims back, the next decision re-plans, and the requests held for the model
stay bounded by the hold timeout (503 with Retry-After), as for any model that cannot wake.
``short_bytes`` None (no view of the GPU: no ledger, or it has not seen the server yet) or
``wait_s`` 0 (the gate off) wake at once, as before the gate.
"""

from __future__ import annotations

from typing import Literal

Verdict = Literal["wake", "wait", "abandon"]


def decide(short_bytes: int | None, since: float, now: float, wait_s: float) -> Verdict:
    """``since``: when this wake started waiting (``now`` on its first ask)."""
    if short_bytes is None or short_bytes <= 0 or wait_s <= 0:
        return "wake"
    return "wait" if now - since < wait_s else "abandon"
