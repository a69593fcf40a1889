"""Models without a server of their own (docs/pools.md): LoRA adapters served by their base's
servers (``{name, base, adapter}``), and pooled models (``pool: NAME``) served by re-targeting a
server of the ``pools:`` section, each such server a hidden model of its own."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.config.sections import section_model, section_placements, section_slo
from orchestrator.config.spec import Idle, ModelSpec, PoolSpec
from orchestrator.config.validator import Validator, name_problem
from orchestrator.types import LoraLimits

STAGES = ("page_cache", "pinned")
ADAPTER_KEYS = {"name", "base", "adapter", "aliases", "slo", "priority"}


def adapter_model(v: Validator, path: str, raw: dict[str, Any], bases: dict[int, ModelSpec]) -> ModelSpec | None:
    """``{name, base, adapter}``: a LoRA adapter served by its base's servers."""
    v.keys(raw, path, ADAPTER_KEYS)
    n_before = len(v.problems)
    name, base_name, adapter = raw.get("name"), raw.get("base"), raw.get("adapter")
    if (why := name_problem(name)) is not None:
        v.err(f"{path}.name", f"{why}: the id clients send as `model`")
    if not isinstance(adapter, str) or not adapter:
        v.err(f"{path}.adapter", "needs the LoRA adapter's directory (a PEFT adapter_config.json and its weights)")
    base = next((b for b in bases.values() if b.name == base_name), None)
    if base is None:
        v.err(f"{path}.base", f"{base_name!r} is not the name of a model of this file with placements")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list):
        v.err(f"{path}.aliases", "must be a list of names")
    else:
        for k, a in enumerate(aliases):
            if (why := name_problem(a)) is not None:
                v.err(f"{path}.aliases[{k}]", why)
    priority = v.number(raw, "priority", path, minimum=0, integer=True)
    slo = section_slo(v, f"{path}.slo", raw.get("slo", {}))
    if len(v.problems) > n_before or base is None:
        return None
    assert isinstance(name, str) and isinstance(adapter, str)
    return ModelSpec(
        name=name,
        model_path=base.model_path,
        shape=base.shape,
        tp_size=base.tp_size,
        aliases=tuple(aliases),
        slo=slo,
        priority=int(priority or 0),
        base=base.name,
        adapter=adapter,
    )


def pooled_model(v: Validator, path: str, raw: dict[str, Any], idle_default: Idle) -> ModelSpec | None:
    """``{name, model_path, pool}``: a model with no server of its own (its pool's serve it)."""
    v.keys(raw, path, {"name", "model_path", "shape", "tp_size", "pool", "aliases", "slo", "priority"})
    pool = raw.get("pool")
    if (why := name_problem(pool)) is not None:
        v.err(f"{path}.pool", f"{why}: the name of a pool of the `pools:` section")
        return None
    # a pooled model reads like a model with one placement, which it then does not have
    tp = raw.get("tp_size", 1)
    gpus = list(range(tp)) if isinstance(tp, int) and not isinstance(tp, bool) and tp >= 1 else [0]
    plain = {k: x for k, x in raw.items() if k != "pool"} | {"placements": [{"gpus": gpus}]}
    m = section_model(v, path, plain, idle_default)
    return replace(m, placements=(), pool=pool) if m is not None else None


def section_pools(v: Validator, raw: Any, models: list[ModelSpec]) -> tuple[tuple[PoolSpec, ...], list[ModelSpec]]:
    """The ``pools:`` section: ``[{name, servers: [{gpus: [0]}, ...], model_path?, stage_gb?}]``. Each
    server becomes a hidden model ``<pool>-<j>`` with that one placement, started with the
    pool's ``model_path`` (default: its first member's)."""
    if not isinstance(raw, list):
        v.err("pools", "must be a list like [{name: llama8b, servers: [{gpus: [0]}]}]")
        return (), []
    pools, slots = [], []
    for i, pr in enumerate(raw):
        path = f"pools[{i}]"
        if not isinstance(pr, dict):
            v.err(path, "must be a mapping with a `name` and `servers`")
            continue
        if (why := name_problem(pr.get("name"))) is not None:
            v.err(f"{path}.name", why)
            continue
        v.keys(pr, path, {"name", "servers", "model_path", "stage_gb", "stage"})
        name = pr["name"]
        members = [m for m in models if m.pool == name]
        if not members:
            v.err(f"{path}.name", f"no model names pool {name!r} (give models `pool: {name}`)")
            continue
        first = members[0]
        # the same geometry, whatever each directory is called (its shape's name)
        odd = [
            m.name
            for m in members
            if (replace(m.shape, name=""), m.tp_size) != (replace(first.shape, name=""), first.tp_size)
        ]
        if odd:
            v.err(
                f"{path}.name",
                f"its models must share one shape and tp_size: {', '.join(odd)} differ from {first.name}",
            )
            continue
        servers = section_placements(v, path, pr.get("servers"), first.tp_size) if "servers" in pr else []
        if not servers:
            v.err(f"{path}.servers", "needs a non-empty list like [{gpus: [0]}]")
            continue
        model_path = pr.get("model_path", first.model_path)
        names = tuple(f"{name}-{j}" for j in range(len(servers)))
        for slot, pl in zip(names, servers, strict=True):
            slots.append(
                replace(first, name=slot, model_path=model_path, aliases=(), placements=(pl,), pool=None, slot_of=name)
            )
        stage_gb = v.number(pr, "stage_gb", path, minimum=0) or 0.0
        stage = pr.get("stage", "page_cache")
        if stage not in STAGES:
            v.err(f"{path}.stage", f"must be one of {', '.join(STAGES)} (where staged checkpoints are kept)")
            continue
        if stage == "pinned" and not stage_gb:
            v.err(f"{path}.stage", "pinned needs a `stage_gb` (the host RAM its pinned buffers may take)")
            continue
        pools.append(
            PoolSpec(name, model_path, first.shape, names, tuple(m.name for m in members), int(stage_gb * 1e9), stage)
        )
    known = {pr.get("name") for pr in raw if isinstance(pr, dict)}
    for m in models:
        if m.pool is not None and m.pool not in known and raw:
            v.err(f"model {m.name!r}.pool", f"{m.pool!r} is not a pool of the `pools:` section")
        elif m.pool is not None and not raw:
            v.err(f"model {m.name!r}.pool", "the file has no `pools:` section")
    return tuple(pools), slots


def with_lora(v: Validator, by_index: dict[int, ModelSpec]) -> list[ModelSpec]:
    """File order; a base that adapters name gets ``lora`` limits (its own section, else the
    defaults)."""
    used = {m.base for m in by_index.values() if m.base is not None}
    out = []
    for _, m in sorted(by_index.items()):
        if m.name in used and m.lora is None:
            m = replace(m, lora=LoraLimits())
        out.append(m)
    return out
