"""Room for a wake: whether a parked instance's weights fit on its GPUs beside what every other
instance there holds now. Pure: no clock, no I/O, no logging (a test checks the imports).

Why: SGLang's ``/resume_memory_occupation`` maps a woken server's weights, CUDA graphs and
activations back at once, while its neighbours' shims keep their KV pages mapped until their
tokens free (a lowered limit drains over about a request's lifetime, a prefix cache until it is
evicted or flushed, the idle fill maps a whole limit). On a card whose physical memory is
``host.gpu_memory_gb`` such a wake can run out of CUDA memory, its own or a neighbour's. The
plan executor (control/plans.py) asks the ledger for a ``Room`` before it wakes a server, and
waits while the room is short.

What counts as held, per GPU (the ledger's own accounting, ``Ledger.room``): every instance's
non-KV memory as the budget counts it (measured peak + activation reserve once measured, else
the cost model), plus its KV pages: a resident instance max(mapped, limit) (the shim may map up
to its limit at any moment: an allocation, the idle fill), any other what its shim last said it
mapped. The waking instance holds its parked figure and needs its awake one on top of that.
The ledger's safety margin stays free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GIB = float(1 << 30)


@dataclass(frozen=True)
class Hold:
    """What one other instance holds on a GPU now (non-KV memory and KV pages, bytes)."""

    instance: str
    bytes: int


@dataclass(frozen=True)
class Room:
    """A wake's room on each of its GPUs (bytes): what it needs on top of what it holds parked,
    what is free beside everyone's holdings and the margin, and who holds the rest (largest
    first)."""

    instance: str
    need: Mapping[int, int]
    free: Mapping[int, int]
    holders: Mapping[int, tuple[Hold, ...]]

    @property
    def short(self) -> dict[int, int]:
        """Per GPU where the wake does not fit yet: the bytes missing."""
        return {g: n - self.free.get(g, 0) for g, n in self.need.items() if n > self.free.get(g, 0)}

    @property
    def short_bytes(self) -> int:
        """The most missing on any of its GPUs; 0 when it fits on all."""
        return max(self.short.values(), default=0)

    def describe(self) -> str:
        """E.g. ``9.2 GiB on GPU 0 (16.0 GiB needed, 6.8 GiB free; neighbours hold llama-1b-a
        21.3 GiB, qwen-7b 40.1 GiB)``: the GPUs short, else all of them."""
        gpus = sorted(self.short) or sorted(self.need)
        parts = []
        for g in gpus:
            held = ", ".join(f"{h.instance} {h.bytes / GIB:.1f} GiB" for h in self.holders.get(g, ()))
            parts.append(
                f"{max(0, self.need[g] - self.free.get(g, 0)) / GIB:.1f} GiB on GPU {g} "
                f"({self.need[g] / GIB:.1f} GiB needed, {max(0, self.free.get(g, 0)) / GIB:.1f} GiB free; "
                f"neighbours hold {held or 'nothing'})"
            )
        return "; ".join(parts)


def room(
    instance: str,
    capacity: Mapping[int, int],
    margin: int,
    need: Mapping[int, int],
    own: Mapping[int, int],
    others: Mapping[int, tuple[Hold, ...]],
) -> Room:
    """The room of ``instance`` on each GPU of ``need``: capacity − margin − what it holds now
    (``own``: its parked memory and KV pages) − what the others hold."""
    free = {g: capacity.get(g, 0) - margin - own.get(g, 0) - sum(h.bytes for h in others.get(g, ())) for g in need}
    holders = {g: tuple(sorted(others.get(g, ()), key=lambda h: (-h.bytes, h.instance))) for g in need}
    return Room(instance, dict(need), free, holders)
