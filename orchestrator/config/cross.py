"""Checks across models: unique names, GPUs that exist, weights and KV limits that fit,
awake limits. They run on the models that parsed, beside the sections' field errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.config.spec import (
    GIB,
    WEIGHTS_BUDGET_FRACTION,
    HostSpec,
    ModelSpec,
    Placement,
    SchedulerSpec,
)
from orchestrator.config.validator import Validator
from orchestrator.types import (
    Mode,
)


@dataclass(frozen=True)
class Where:
    """The field paths of one parsed model: its own (names, aliases) and each placement's."""

    model: str
    placements: tuple[str, ...]

    @staticmethod
    def of_model(path: str, m: ModelSpec) -> Where:
        return Where(path, tuple(f"{path}.placements[{j}]" for j in range(len(m.placements))))

    @staticmethod
    def of_slot(raw_pools: Any, m: ModelSpec) -> Where:
        """A pool's server (a hidden model ``<pool>-<j>``): its entry of ``pools[i].servers``."""
        pools = raw_pools if isinstance(raw_pools, list) else []
        i = next((k for k, p in enumerate(pools) if isinstance(p, dict) and p.get("name") == m.slot_of), 0)
        j = m.name.rsplit("-", 1)[-1]
        return Where(f"pools[{i}]", (f"pools[{i}].servers[{j}]",))


def check_cross(v: Validator, models: Sequence[tuple[ModelSpec, Where]], gpu_count: int, host: HostSpec) -> None:
    seen: dict[str, str] = {}
    for m, at in models:
        for j, n in enumerate((m.name, *m.aliases)):
            where = f"{at.model}.name" if j == 0 else f"{at.model}.aliases[{j - 1}]"
            if n in seen:
                v.err(where, f"{n!r} is already used by {seen[n]}: names and aliases must be unique")
            else:
                seen[n] = f"model {m.name!r}"
    host_ids = f"0-{gpu_count - 1}" if gpu_count > 1 else "0"
    weights_on_gpu: dict[int, list[tuple[str, float]]] = {}
    for m, at in models:
        groups: set[tuple[int, ...]] = set()
        for pl, pp in zip(m.placements, at.placements, strict=True):
            for g in pl.gpus:
                if g >= gpu_count:
                    v.err(f"{pp}.gpus", f"GPU {g} does not exist (this host has {host_ids})")
            if pl.gpus in groups:
                v.err(f"{pp}.gpus", f"{m.name!r} is already placed on GPU(s) {list(pl.gpus)}: one instance per group")
            groups.add(pl.gpus)
            check_kv_fits(v, pp, pl, m.tp_size, host)
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


def check_kv_fits(v: Validator, path: str, pl: Placement, tp_size: int, host: HostSpec) -> None:
    """KV limits per GPU as deployment.py reads them: ``kv_pool_gb`` is the group's (each GPU
    maps its ÷ ``tp_size``), ``kv_floor_gb`` what each GPU keeps. Neither may exceed the GPU."""
    gpu = host.gpu_memory_gb
    if pl.kv_pool_gb is not None and pl.kv_pool_gb / tp_size > gpu:
        per = f" ({pl.kv_pool_gb / tp_size:g} GB per GPU over tp_size {tp_size})" if tp_size > 1 else ""
        v.err(
            f"{path}.kv_pool_gb",
            f"{pl.kv_pool_gb:g} GB{per} is more than a {gpu:g} GB GPU (host.gpu_memory_gb): lower it",
        )
    if pl.kv_floor_gb is not None and pl.kv_floor_gb > gpu:
        v.err(
            f"{path}.kv_floor_gb",
            f"{pl.kv_floor_gb:g} GB is more than a {gpu:g} GB GPU (host.gpu_memory_gb): lower it",
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


def check_static_pools(v: Validator, models: Sequence[ModelSpec], mode: Mode, host: HostSpec) -> None:
    """Mode static: the fixed KV pools (``kv_pool_gb``) and the weights of the models that start
    awake on a GPU must fit that GPU together, or the last server to start fails after its whole
    boot. Lenient: CUDA context, graphs and activations are not counted, so only certain
    overflows are refused. (Modes elastic/full: ``kv_pool_gb`` is a ceiling the ledger shares.)"""
    if mode != "static":
        return
    gpu = host.gpu_memory_gb * GIB
    on_gpu: dict[int, list[tuple[str, float, float]]] = {}
    for m in models:
        for pl in m.placements:
            if pl.on and pl.kv_pool_gb is not None:
                for g in pl.gpus:
                    share = (m.name, m.shape.weight_bytes / m.tp_size, pl.kv_pool_gb * GIB / m.tp_size)
                    on_gpu.setdefault(g, []).append(share)
    for g, entries in sorted(on_gpu.items()):
        total = sum(w + kv for _, w, kv in entries)
        if total > gpu:
            parts = ", ".join(f"{n} ({w / GIB:.1f} + {kv / GIB:.1f} GiB)" for n, w, kv in entries)
            v.err(
                f"GPU {g}",
                f"weights + kv_pool_gb of the models that start awake ({parts}) need {total / GIB:.1f} GiB, "
                f"more than the {host.gpu_memory_gb:g} GB GPU (host.gpu_memory_gb): lower their kv_pool_gb "
                "or set `on: false` on some",
            )
