"""Reading a placements file: YAML 1.2 (or Prism's JSON) to validated dataclasses, every problem of a file
reported together."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.cross import Where, check_awake_limit, check_cross, check_static_pools
from orchestrator.config.marks import load_with_lines
from orchestrator.config.pooled import adapter_model, pooled_model, section_pools, with_lora
from orchestrator.config.prism import model_from_prism
from orchestrator.config.sections import (
    section_auth,
    section_hold,
    section_host,
    section_idle,
    section_liveness,
    section_model,
    section_restart,
    section_scheduler,
)
from orchestrator.config.spec import (
    Config,
    Idle,
    InstanceSpec,
    ModelSpec,
    Placement,
)
from orchestrator.config.validator import Validator
from orchestrator.errors import ConfigError
from orchestrator.types import (
    MODES,
    gpu_label,
)


class Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. PyYAML's YAML 1.1 reads the key `on:` (and yes/no/off)
    as a boolean, which would turn `on: true` into `True: true`."""


Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_config(path: str | Path, gpu_count: int | None = None) -> Config:
    """Read and validate a placements file. ``gpu_count`` = GPUs of the real host (None: the
    sim engine, whose host has ``host.gpus`` GPUs, or as many as the file uses)."""
    raw, lines = read_placements_with_lines(path)
    return parse_config(raw, source=str(path), gpu_count=gpu_count, lines=lines)


def read_placements(path: str | Path) -> Any:
    """The placements file as plain data, not yet validated (``up --ray`` rewrites node-local
    GPU ids before ``parse_config``)."""
    return read_placements_with_lines(path)[0]


def read_placements_with_lines(path: str | Path) -> tuple[Any, dict[str, int]]:
    """The placements file as plain data and the YAML line of each field path (none for JSON)."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read the placements file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [f"{p}: line {line}: not UTF-8 text (byte {exc.object[exc.start]:#x}); save it as UTF-8"]
        ) from None
    lines: dict[str, int] = {}
    try:
        if p.suffix == ".json":
            raw = json.loads(text)
        else:
            raw, lines = load_with_lines(text, Yaml12Loader)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError([f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"]) from exc
    if expanded_size(raw, {}) > MAX_VALUES:
        raise ConfigError(
            [f"{p}: its YAML aliases (*name) expand to more than {MAX_VALUES} values (an alias bomb?); write it out"]
        )
    return raw, lines


MAX_VALUES = 100_000  # values of a placements file once aliases are expanded: thousands at most


def expanded_size(obj: Any, memo: dict[int, int]) -> int:
    """How many values ``obj`` holds once every alias is expanded, counted in time linear in
    the distinct objects (an alias is one shared object: memoized by identity). Nested
    aliases ("billion laughs") give an exponential count in microseconds, never the
    expansion itself."""
    if not isinstance(obj, (dict, list)):
        return 1
    key = id(obj)
    if key not in memo:
        memo[key] = 0  # a cycle (a recursive alias) counts once
        items = [*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj
        memo[key] = 1 + sum(min(expanded_size(x, memo), MAX_VALUES + 1) for x in items)
    return memo[key]


def parse_config(
    raw: Any, source: str = "<memory>", gpu_count: int | None = None, lines: Mapping[str, int] | None = None
) -> Config:
    """Every problem of the file together: the sections' field errors, then the checks across
    the models that parsed (a broken model does not hide a clash between two good ones).
    ``lines``: the YAML line of each field path, to prefix problems with."""
    if isinstance(raw, list):  # Prism's JSON model_configs, as-is
        raw = {"models": [model_from_prism(i, m) for i, m in enumerate(raw)]}
    v = Validator(lines)
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping with a `models:` list (or Prism's JSON list)"])
    v.keys(raw, "", {"models", "host", "mode", "idle", "hold", "scheduler", "restart", "liveness", "auth", "pools"})
    api_keys_file = section_auth(v, raw.get("auth", {}))
    host = section_host(v, raw.get("host", {}))
    mode = v.one_of(raw.get("mode", "full"), "mode", MODES, "full")
    idle_default = section_idle(v, "idle", raw.get("idle", {}), Idle())
    hold = section_hold(v, raw.get("hold", {}))
    scheduler = section_scheduler(v, raw.get("scheduler", {}))
    restart = section_restart(v, raw.get("restart", {}))
    liveness = section_liveness(v, raw.get("liveness", {}))
    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        v.err("models", "needs a non-empty list of models")
        raise ConfigError([f"{source}: {p}" for p in v.problems])
    # adapters (``base``) and pooled models (``pool``) have no server of their own (pooled.py)
    is_adapter = [isinstance(r, dict) and "base" in r for r in models_raw]
    is_pooled = [isinstance(r, dict) and "pool" in r for r in models_raw]
    pooled = {
        i: m
        for i, r in enumerate(models_raw)
        if is_pooled[i] and (m := pooled_model(v, f"models[{i}]", r, idle_default))
    }
    plain = {
        i: m
        for i, r in enumerate(models_raw)
        if not is_adapter[i] and not is_pooled[i] and (m := section_model(v, f"models[{i}]", r, idle_default))
    }
    adapters = {
        i: a for i, r in enumerate(models_raw) if is_adapter[i] and (a := adapter_model(v, f"models[{i}]", r, plain))
    }
    by_index = {**plain, **adapters, **pooled}
    models = with_lora(v, by_index)
    pools, slots = section_pools(v, raw.get("pools", []), models)
    where = [Where.of_model(f"models[{i}]", m) for i, m in sorted(by_index.items())]
    where += [Where.of_slot(raw.get("pools", []), m) for m in slots]
    models += slots

    used = {g for m in models for pl in m.placements for g in pl.gpus}
    if gpu_count is None:
        gpu_count = host.gpus if host.gpus is not None else max(used, default=0) + 1
    check_cross(v, list(zip(models, where, strict=True)), gpu_count, host)
    check_awake_limit(v, models, mode, scheduler)
    check_static_pools(v, models, mode, host)
    if (staged := sum(p.stage_bytes for p in pools)) > host.host_memory_gb * 1e9:
        v.err(
            "pools",
            f"stage_gb of all pools ({staged / 1e9:g} GB) exceeds host.host_memory_gb ({host.host_memory_gb:g})",
        )
    v.raise_if_any(source)
    instances = tuple(
        InstanceSpec(id=_instance_id(m, pl), model=m, placement=pl) for m in models for pl in m.placements
    )
    return Config(
        tuple(models),
        host,
        mode,
        hold,
        source,
        gpu_count,
        instances,
        scheduler,
        restart,
        liveness,
        api_keys_file,
        pools,
    )


def _instance_id(m: ModelSpec, pl: Placement) -> str:
    return f"{m.name}@gpu{gpu_label(pl.gpus)}"
