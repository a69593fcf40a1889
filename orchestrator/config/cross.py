"""Checks across models: unique names, GPUs that exist, weights that fit, awake limits."""

from __future__ import annotations

from orchestrator.config.spec import (
    GIB,
    WEIGHTS_BUDGET_FRACTION,
    HostSpec,
    ModelSpec,
    SchedulerSpec,
)
from orchestrator.config.validator import Validator
from orchestrator.types import (
    Mode,
)


def check_cross(v: Validator, models: list[ModelSpec], gpu_count: int, host: HostSpec) -> None:
    seen: dict[str, str] = {}
    for i, m in enumerate(models):
        for j, n in enumerate((m.name, *m.aliases)):
            where = f"models[{i}].name" if j == 0 else f"models[{i}].aliases[{j - 1}]"
            if n in seen:
                v.err(where, f"{n!r} is already used by {seen[n]}: names and aliases must be unique")
            else:
                seen[n] = f"model {m.name!r}"
    host_ids = f"0-{gpu_count - 1}" if gpu_count > 1 else "0"
    weights_on_gpu: dict[int, list[tuple[str, float]]] = {}
    for i, m in enumerate(models):
        groups: set[tuple[int, ...]] = set()
        for j, pl in enumerate(m.placements):
            for g in pl.gpus:
                if g >= gpu_count:
                    v.err(f"models[{i}].placements[{j}].gpus", f"GPU {g} does not exist (this host has {host_ids})")
            if pl.gpus in groups:
                v.err(
                    f"models[{i}].placements[{j}].gpus",
                    f"{m.name!r} is already placed on GPU(s) {list(pl.gpus)}: one instance per group",
                )
            groups.add(pl.gpus)
            if pl.on:
                for g in pl.gpus:
                    weights_on_gpu.setdefault(g, []).append((m.name, m.shape.weight_bytes / m.tp_size))
    budget = host.gpu_memory_gb * GIB * WEIGHTS_BUDGET_FRACTION
    for g, entries in sorted(weights_on_gpu.items()):
        total = sum(b for _, b in entries)
        if total > budget:
            names = ", ".join(f"{n} ({b / GIB:.1f} GiB)" for n, b in entries)
            v.err(
                f"GPU {g}",
                f"weights of the models that start awake ({names}) need "
                f"{total / GIB:.1f} GiB, more than {budget / GIB:.1f} GiB of a "
                f"{host.gpu_memory_gb:g} GB GPU: set `on: false` on some or raise tp_size",
            )


def check_awake_limit(v: Validator, models: list[ModelSpec], mode: Mode, sched: SchedulerSpec) -> None:
    """``scheduler.max_awake_per_gpu`` needs mode full; ``up`` may not start more awake per GPU."""
    limit = sched.max_awake_per_gpu
    if limit is not None and mode != "full":
        v.err("scheduler.max_awake_per_gpu", f"needs mode full (got {mode}): only it parks and wakes")
    elif limit is not None:
        for g in sorted({g for m in models for pl in m.placements for g in pl.gpus}):
            names = [m.name for m in models if any(pl.on and g in pl.gpus for pl in m.placements)]
            if len(names) > limit:
                v.err(
                    f"GPU {g}",
                    f"{len(names)} models start awake ({', '.join(names)}) but "
                    f"scheduler.max_awake_per_gpu is {limit}: set `on: false` on the others",
                )
