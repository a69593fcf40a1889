"""Moore–Hodgson: the largest set of jobs one machine can finish by their deadlines.

Jobs are taken in earliest-deadline order; whenever the running completion time passes the
current job's deadline, the job with the longest processing time so far is dropped (Moore 1968,
optimal for 1||ΣU_j). Two extensions for the proxy's queue, both reducing to the classic
algorithm when unused: ``rank`` (a model's priority: lower ranks are dropped first, the longest
among them) and ``ready`` (a job cannot start before its engine is awake; the machine idles
until then, which makes the result a heuristic rather than an optimum).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    key: str
    p: float  # processing time (expected prefill), seconds
    d: float  # deadline (absolute)
    rank: int = 0  # higher = dropped later
    ready: float = float("-inf")  # cannot start before this (absolute)


def moore_hodgson(jobs: Sequence[Job], start: float) -> tuple[list[Job], list[Job]]:
    """(on time in the order to run them, late in the order they were dropped)."""
    order = sorted(jobs, key=lambda j: (j.d, j.key))
    released = any(j.ready > start for j in order)
    kept: list[Job] = []
    gone: set[str] = set()
    heap: list[tuple[int, float, str, Job]] = []  # lowest rank, then longest, first
    late: list[Job] = []
    t = start
    for job in order:
        kept.append(job)
        heapq.heappush(heap, (job.rank, -job.p, job.key, job))
        t = max(t, job.ready) + job.p
        while t > job.d and heap:
            victim = heapq.heappop(heap)[3]
            gone.add(victim.key)
            late.append(victim)
            if released:
                kept = [k for k in kept if k.key not in gone]
                t = _completion(kept, start)
            else:
                t -= victim.p
    return [k for k in kept if k.key not in gone], late


def _completion(kept: Sequence[Job], start: float) -> float:
    t = start
    for k in kept:
        t = max(t, k.ready) + k.p
    return t


def completion_times(jobs: Sequence[Job], start: float) -> list[float]:
    """When each job finishes if run in the given order from ``start``."""
    out = []
    t = start
    for j in jobs:
        t = max(t, j.ready) + j.p
        out.append(t)
    return out
