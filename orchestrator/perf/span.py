"""Work of servers that span GPU groups, per GPU: a TP server's step holds every GPU of its group.

Without MPS a GPU runs one process's kernels at a time (and under MPS a prefill, compute-bound,
still waits for its neighbours' work whole: sharing.py, so the sums below are the same under
either sharing), and a TP server's step runs on all of its
ranks at once (an all-reduce after attention and after the MLP waits for every rank). So a
second of a TP 4 server's work is a second on each of its four GPUs, and work that must start
on a group (a TP server's next prefill) waits for the busiest GPU of the group, where TP-1
neighbours' work adds to the group's own. Pure: the caller passes the servers' GPUs and their
seconds of work (the admission gate's prefill backlog; the TPOT guard charges decode steps the
same way, policy/placement/kvpr.py ``round_s``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def per_gpu(work: Iterable[tuple[Sequence[int], float]]) -> dict[int, float]:
    """Seconds of work on each GPU: each server's seconds charged to every GPU it spans."""
    out: dict[int, float] = {}
    for gpus, seconds in work:
        for g in gpus:
            out[g] = out.get(g, 0.0) + seconds
    return out


def wait_s(gpus: Iterable[int], on_gpu: Mapping[int, float]) -> float:
    """How long work that needs every GPU of ``gpus`` waits: the busiest of them."""
    return max((on_gpu.get(g, 0.0) for g in gpus), default=0.0)
