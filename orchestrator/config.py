"""The placements file: YAML (chimera's schema) or Prism's JSON ``model_configs``, validated at
load into frozen dataclasses. Every problem names its field path and the fix; all problems of a
file are reported together. See docs/configuration.md for the schema.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from orchestrator.errors import ConfigError
from orchestrator.shapes import ModelShape, ShapeError, resolve_shape
from orchestrator.types import (
    LOAD_FORMATS,
    MODES,
    ON_LATE,
    PARK_WHEN_IDLE,
    LoadFormat,
    LoraLimits,
    Mode,
    OnLate,
    ParkWhen,
    gpu_label,
)

W = TypeVar("W", bound=str)

GIB = 1 << 30

# Fraction of a GPU that weights of awake models may take at start; the rest is KV, CUDA graphs,
# activations and the CUDA context (~1.5-2.4 GB per server, docs/gpu-testing.md).
WEIGHTS_BUDGET_FRACTION = 0.9

# Prism's sensitivity study: an idle threshold under 40 s thrashes, over 80 s hoards memory.
DEFAULT_IDLE_PARK_S = 45.0


# Objectives of a model whose placements file sets none. TPOT: weighs its KV pressure and bounds
# its GPU's decode rounds (global scheduler, `chimera-orch plan`). TTFT: orders its requests in
# the admission queue (deadline = arrival + this) but never sheds them: only an objective the
# file sets is enforced (proxy/admission.py).
DEFAULT_TTFT_SLO_S = 10.0
DEFAULT_TPOT_SLO_S = 0.1


@dataclass(frozen=True)
class SLO:
    """Per-request service objectives in seconds; ``None`` = no objective."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    @property
    def ttft_or_default(self) -> float:
        return self.ttft_s if self.ttft_s is not None else DEFAULT_TTFT_SLO_S

    @property
    def tpot_or_default(self) -> float:
        return self.tpot_s if self.tpot_s is not None else DEFAULT_TPOT_SLO_S


@dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...]
    on: bool = True
    kv_pool_gb: float | None = None  # ceiling of this instance's KV pool; None = engine default
    kv_floor_gb: float | None = None  # elastic mode: KV this instance keeps whatever others need
    # The node of a Ray cluster it runs on (``up --ray``; orchestrator/cluster/placing.py turns
    # the node's local GPU ids into the cluster's global ones). None: one host.
    node: str | None = None


@dataclass(frozen=True)
class Idle:
    """When an idle model gives its GPU memory back (time-sharing)."""

    park_after_s: float = DEFAULT_IDLE_PARK_S  # 0 = never park for idleness
    when: ParkWhen = "needed"  # needed: only when its memory is wanted; always; never


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model_path: str
    shape: ModelShape
    tp_size: int = 1
    aliases: tuple[str, ...] = ()
    placements: tuple[Placement, ...] = ()
    slo: SLO = SLO()
    priority: int = 0
    load_format: LoadFormat = "auto"
    engine_args: tuple[str, ...] = ()  # extra SGLang flags, passed through after validation
    idle: Idle = Idle()
    # A LoRA adapter served as a model of its own (docs/pools.md): ``base`` names the model whose
    # servers run it, ``adapter`` is its path; it has no placements (model_path, shape and
    # tp_size are its base's).
    base: str | None = None
    adapter: str | None = None
    lora: LoraLimits | None = None  # a base whose servers start with --enable-lora
    # Shape pools (docs/pools.md): a pooled model (``pool``) has no server of its own; one of
    # its pool's servers is re-targeted to its weights. A pool's server is a model of its own
    # (``slot_of`` = the pool's name), hidden from clients, one placement each.
    pool: str | None = None
    slot_of: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.base is not None


@dataclass(frozen=True)
class PoolSpec:
    """Warm servers of one shape, re-targeted to the pooled models that name the pool."""

    name: str
    model_path: str  # what its servers start with (the first member's weights, by default)
    shape: ModelShape
    slots: tuple[str, ...]  # its servers' (hidden) model names, one placement each
    members: tuple[str, ...]  # the pooled models it serves


@dataclass(frozen=True)
class HostSpec:
    """The host the file runs on. ``gpus`` is used by the sim engine (a real host is detected)."""

    gpus: int | None = None
    gpu_memory_gb: float = 80.0
    host_memory_gb: float = 512.0  # RAM of the simulated host (a real host's is measured)


@dataclass(frozen=True)
class InstanceSpec:
    """One engine instance = one model on one GPU group (one placement)."""

    id: str
    model: ModelSpec
    placement: Placement

    @property
    def gpus(self) -> tuple[int, ...]:
        return self.placement.gpus


@dataclass(frozen=True)
class HoldLimits:
    """Requests held in the proxy while their model starts or wakes (then 503 + Retry-After)."""

    per_model: int = 256
    total: int = 1024


@dataclass(frozen=True)
class RestartLimits:
    """A crashed engine, or one whose start or wake failed, is restarted after ``backoff_s``,
    doubling per failure up to ``max_backoff_s``; ``max_failures`` failures within ``window_s``
    mark it failed for good (policy/restart.py)."""

    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_failures: int = 5
    window_s: float = 300.0


@dataclass(frozen=True)
class LivenessLimits:
    """An awake engine whose ``/v1/loads`` has not answered for ``window_s`` (or whose request
    timed out in the proxy) is probed with ``GET /model_info`` (``probe_timeout_s``); if that fails
    too it is hung: killed and restarted like a crash (policy/liveness.py)."""

    window_s: float = 10.0
    probe_timeout_s: float = 5.0


@dataclass(frozen=True)
class SchedulerSpec:
    """The two-level scheduler (mode full; docs/scheduling.md)."""

    tau: float = 0.3  # migrate a model only when its pair's KV pressure ratio drops by more
    on_late: OnLate = "shed"  # a request past its TTFT deadline (model with slo.ttft_s): shed | serve
    # Swap-on-demand (mode full only): at most this many models awake per GPU; waking another
    # parks the least recently active first, as llama-swap does. None = no limit (chimera).
    max_awake_per_gpu: int | None = None


@dataclass(frozen=True)
class Config:
    models: tuple[ModelSpec, ...]
    host: HostSpec = HostSpec()
    mode: Mode = "full"
    hold: HoldLimits = HoldLimits()
    source: str = "<memory>"
    gpu_count: int = 1
    instances: tuple[InstanceSpec, ...] = field(default=())
    scheduler: SchedulerSpec = SchedulerSpec()
    restart: RestartLimits = RestartLimits()
    liveness: LivenessLimits = LivenessLimits()
    pools: tuple[PoolSpec, ...] = ()

    def model(self, name_or_alias: str) -> ModelSpec | None:
        for m in self.models:
            if name_or_alias == m.name or name_or_alias in m.aliases:
                return m
        return None

    def names(self) -> list[str]:
        return [n for m in self.models for n in (m.name, *m.aliases)]


# --------------------------------------------------------------------------------------------
# Loading


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
    return parse_config(read_placements(path), source=str(path), gpu_count=gpu_count)


def read_placements(path: str | Path) -> Any:
    """The placements file as plain data (Prism's JSON list turned into chimera's schema), not
    yet validated: ``up --ray`` rewrites node-local GPU ids before ``parse_config``."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read the placements file: {exc.strerror}"]) from exc
    try:
        raw = json.loads(text) if p.suffix == ".json" else yaml.load(text, Loader=Yaml12Loader)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError([f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"]) from exc
    if isinstance(raw, list):  # Prism's JSON model_configs, as-is
        raw = {"models": [model_from_prism(i, m) for i, m in enumerate(raw)]}
    return raw


def parse_config(raw: Any, source: str = "<memory>", gpu_count: int | None = None) -> Config:
    if isinstance(raw, list):  # Prism's JSON model_configs, as-is
        raw = {"models": [model_from_prism(i, m) for i, m in enumerate(raw)]}
    v = _Validator()
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping with a `models:` list (or Prism's JSON list)"])
    v.keys(raw, "", {"models", "host", "mode", "idle", "hold", "scheduler", "restart", "liveness", "pools"})
    host = _host(v, raw.get("host", {}))
    mode = v.one_of(raw.get("mode", "full"), "mode", MODES, "full")
    idle_default = _idle(v, "idle", raw.get("idle", {}), Idle())
    hold = _hold(v, raw.get("hold", {}))
    scheduler = _scheduler(v, raw.get("scheduler", {}))
    restart = _restart(v, raw.get("restart", {}))
    liveness = _liveness(v, raw.get("liveness", {}))
    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        v.err("models", "needs a non-empty list of models")
        raise ConfigError([f"{source}: {p}" for p in v.problems])
    pooled = {
        i: m
        for i, r in enumerate(models_raw)
        if isinstance(r, dict) and "pool" in r and (m := _pooled(v, f"models[{i}]", r))
    }
    is_adapter = [isinstance(r, dict) and "base" in r for r in models_raw]
    own = [isinstance(r, dict) and "pool" in r for r in models_raw]  # pooled: no server of its own
    plain = {
        i: m
        for i, r in enumerate(models_raw)
        if not is_adapter[i] and not own[i] and (m := _model(v, f"models[{i}]", r, idle_default))
    }
    adapters = {
        i: a for i, r in enumerate(models_raw) if is_adapter[i] and (a := _adapter(v, f"models[{i}]", r, plain))
    }
    models = _with_lora(v, {**plain, **adapters, **pooled})
    pools, slots = _pools(v, raw.get("pools", []), models)
    models += slots
    v.raise_if_any(source)

    used = {g for m in models for pl in m.placements for g in pl.gpus}
    if gpu_count is None:
        gpu_count = host.gpus if host.gpus is not None else max(used, default=0) + 1
    _check_cross(v, models, gpu_count, host)
    v.raise_if_any(source)
    _check_awake_limit(v, models, mode, scheduler)
    v.raise_if_any(source)
    instances = tuple(
        InstanceSpec(id=_instance_id(m, pl), model=m, placement=pl) for m in models for pl in m.placements
    )
    return Config(tuple(models), host, mode, hold, source, gpu_count, instances, scheduler, restart, liveness, pools)


def _instance_id(m: ModelSpec, pl: Placement) -> str:
    return f"{m.name}@gpu{gpu_label(pl.gpus)}"


class _Validator:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def err(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}" if path else msg)

    def raise_if_any(self, source: str) -> None:
        if self.problems:
            raise ConfigError([f"{source}: {p}" for p in self.problems])

    def one_of(self, value: object, path: str, allowed: tuple[W, ...], default: W) -> W:
        """``value`` as one of the words ``allowed`` (a Literal's values), else an error and
        ``default``."""
        for word in allowed:
            if value == word:
                return word
        self.err(path, f"must be one of {', '.join(allowed)} (got {value!r})")
        return default

    def keys(self, obj: dict[str, Any], path: str, allowed: set[str]) -> None:
        for k in obj:
            if k not in allowed:
                near = difflib.get_close_matches(str(k), sorted(allowed), n=1)
                hint = f"did you mean `{near[0]}`?" if near else f"allowed: {', '.join(sorted(allowed))}"
                self.err(f"{path}.{k}" if path else str(k), f"unknown field ({hint})")

    def number(
        self, obj: dict[str, Any], key: str, path: str, *, minimum: float = 0, integer: bool = False
    ) -> float | None:
        val = obj.get(key)
        if val is None:
            return None
        ok = isinstance(val, int) if integer else isinstance(val, (int, float))
        if isinstance(val, bool) or not ok or val < minimum:
            kind = "an integer" if integer else "a number"
            self.err(f"{path}.{key}", f"must be {kind} >= {minimum} (got {val!r})")
            return None
        return float(val)


def _host(v: _Validator, raw: Any) -> HostSpec:
    if not isinstance(raw, dict):
        v.err("host", "must be a mapping like {gpus: 2, gpu_memory_gb: 80}")
        return HostSpec()
    v.keys(raw, "host", {"gpus", "gpu_memory_gb", "host_memory_gb"})
    gpus = v.number(raw, "gpus", "host", minimum=1, integer=True)
    mem = v.number(raw, "gpu_memory_gb", "host", minimum=1)
    ram = v.number(raw, "host_memory_gb", "host", minimum=1)
    return HostSpec(
        gpus=int(gpus) if gpus is not None else None,
        gpu_memory_gb=mem if mem is not None else 80.0,
        host_memory_gb=ram if ram is not None else 512.0,
    )


_MODEL_KEYS = {
    "name",
    "model_path",
    "shape",
    "tp_size",
    "aliases",
    "placements",
    "slo",
    "priority",
    "load_format",
    "engine_args",
    "idle",
    "lora",
}
_ADAPTER_KEYS = {"name", "base", "adapter", "aliases", "slo", "priority"}
# LoRA target modules of the Llama/Qwen families, a subset of SGLang 0.5.17's
# SUPPORTED_LORA_TARGET_MODULES (srt/utils/common.py), plus its "all".
LORA_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "qkv_proj",
    "gate_up_proj",
    "embed_tokens",
    "lm_head",
    "all",
)


def _idle(v: _Validator, path: str, raw: Any, default: Idle) -> Idle:
    if not isinstance(raw, dict):
        v.err(path, "must be a mapping like {park_after_s: 45, when: needed}")
        return default
    v.keys(raw, path, {"park_after_s", "when"})
    after = v.number(raw, "park_after_s", path, minimum=0)
    when = v.one_of(raw.get("when", default.when), f"{path}.when", PARK_WHEN_IDLE, default.when)
    return Idle(after if after is not None else default.park_after_s, when)


def _hold(v: _Validator, raw: Any) -> HoldLimits:
    if not isinstance(raw, dict):
        v.err("hold", "must be a mapping like {per_model: 256, total: 1024}")
        return HoldLimits()
    v.keys(raw, "hold", {"per_model", "total"})
    per = v.number(raw, "per_model", "hold", minimum=1, integer=True)
    tot = v.number(raw, "total", "hold", minimum=1, integer=True)
    return HoldLimits(int(per) if per is not None else 256, int(tot) if tot is not None else 1024)


def _restart(v: _Validator, raw: Any) -> RestartLimits:
    d = RestartLimits()
    if not isinstance(raw, dict):
        v.err("restart", "must be a mapping like {backoff_s: 1, max_backoff_s: 30, max_failures: 5, window_s: 300}")
        return d
    v.keys(raw, "restart", {"backoff_s", "max_backoff_s", "max_failures", "window_s"})
    base = v.number(raw, "backoff_s", "restart", minimum=0)
    cap = v.number(raw, "max_backoff_s", "restart", minimum=0)
    n = v.number(raw, "max_failures", "restart", minimum=1, integer=True)
    window = v.number(raw, "window_s", "restart", minimum=0)
    out = RestartLimits(
        d.backoff_s if base is None else base,
        d.max_backoff_s if cap is None else cap,
        d.max_failures if n is None else int(n),
        d.window_s if window is None else window,
    )
    if out.max_backoff_s < out.backoff_s:
        v.err("restart.max_backoff_s", f"must be at least restart.backoff_s ({out.backoff_s:g})")
    return out


def _liveness(v: _Validator, raw: Any) -> LivenessLimits:
    d = LivenessLimits()
    if not isinstance(raw, dict):
        v.err("liveness", "must be a mapping like {window_s: 10, probe_timeout_s: 5}")
        return d
    v.keys(raw, "liveness", {"window_s", "probe_timeout_s"})
    window = v.number(raw, "window_s", "liveness", minimum=0.1)
    probe = v.number(raw, "probe_timeout_s", "liveness", minimum=0.1)
    return LivenessLimits(d.window_s if window is None else window, d.probe_timeout_s if probe is None else probe)


def _scheduler(v: _Validator, raw: Any) -> SchedulerSpec:
    if not isinstance(raw, dict):
        v.err("scheduler", "must be a mapping like {tau: 0.3, on_late: shed}")
        return SchedulerSpec()
    v.keys(raw, "scheduler", {"tau", "on_late", "max_awake_per_gpu"})
    tau = v.number(raw, "tau", "scheduler", minimum=0)
    on_late = v.one_of(raw.get("on_late", "shed"), "scheduler.on_late", ON_LATE, "shed")
    awake = v.number(raw, "max_awake_per_gpu", "scheduler", minimum=1, integer=True)
    return SchedulerSpec(
        tau if tau is not None else SchedulerSpec.tau, on_late, int(awake) if awake is not None else None
    )


def _model(v: _Validator, path: str, raw: Any, idle_default: Idle = Idle()) -> ModelSpec | None:
    if not isinstance(raw, dict):
        v.err(path, "must be a mapping with at least `name`, `model_path` and `placements`")
        return None
    v.keys(raw, path, _MODEL_KEYS)
    n_before = len(v.problems)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        v.err(f"{path}.name", "needs a non-empty string (the id clients send as `model`)")
    model_path = raw.get("model_path")
    if not isinstance(model_path, str) or not model_path:
        v.err(f"{path}.model_path", "needs a model directory or a known model id")
    tp = v.number(raw, "tp_size", path, minimum=1, integer=True)
    tp_size = int(tp) if tp is not None else 1
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        v.err(f"{path}.aliases", "must be a list of non-empty strings")
        aliases = []
    load_format = v.one_of(raw.get("load_format", "auto"), f"{path}.load_format", LOAD_FORMATS, "auto")
    engine_args = raw.get("engine_args", [])
    if not isinstance(engine_args, list) or not all(isinstance(a, str) for a in engine_args):
        v.err(f"{path}.engine_args", "must be a list of strings, e.g. ['--chunked-prefill-size', '4096']")
        engine_args = []
    priority = v.number(raw, "priority", path, minimum=0, integer=True)
    slo = _slo(v, f"{path}.slo", raw.get("slo", {}))
    idle = _idle(v, f"{path}.idle", raw.get("idle", {}), idle_default)
    placements = _placements(v, path, raw.get("placements"), tp_size)
    lora = _lora(v, f"{path}.lora", raw.get("lora"))
    shape: ModelShape | None = None
    if isinstance(model_path, str) and model_path:
        shape_name = raw.get("shape")
        if shape_name is not None and not isinstance(shape_name, str):
            v.err(f"{path}.shape", "must be the name of a shipped shape")
        else:
            try:
                shape = resolve_shape(model_path, shape_name)
            except ShapeError as exc:
                v.err(f"{path}.shape" if shape_name else f"{path}.model_path", str(exc))
    if len(v.problems) > n_before or shape is None:
        return None
    assert isinstance(name, str) and isinstance(model_path, str)
    return ModelSpec(
        name=name,
        model_path=model_path,
        shape=shape,
        tp_size=tp_size,
        aliases=tuple(aliases),
        placements=tuple(placements),
        slo=slo,
        priority=int(priority or 0),
        load_format=load_format,
        engine_args=tuple(engine_args),
        idle=idle,
        lora=lora,
    )


def _adapter(v: _Validator, path: str, raw: dict[str, Any], bases: dict[int, ModelSpec]) -> ModelSpec | None:
    """``{name, base, adapter}``: a LoRA adapter served by its base's servers."""
    v.keys(raw, path, _ADAPTER_KEYS)
    n_before = len(v.problems)
    name, base_name, adapter = raw.get("name"), raw.get("base"), raw.get("adapter")
    if not isinstance(name, str) or not name.strip():
        v.err(f"{path}.name", "needs a non-empty string (the id clients send as `model`)")
    if not isinstance(adapter, str) or not adapter:
        v.err(f"{path}.adapter", "needs the LoRA adapter's directory (a PEFT adapter_config.json and its weights)")
    base = next((b for b in bases.values() if b.name == base_name), None)
    if base is None:
        v.err(f"{path}.base", f"{base_name!r} is not the name of a model of this file with placements")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        v.err(f"{path}.aliases", "must be a list of non-empty strings")
    priority = v.number(raw, "priority", path, minimum=0, integer=True)
    slo = _slo(v, f"{path}.slo", raw.get("slo", {}))
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


def _pooled(v: _Validator, path: str, raw: dict[str, Any]) -> ModelSpec | None:
    """``{name, model_path, pool}``: a model with no server of its own (its pool's serve it)."""
    v.keys(raw, path, {"name", "model_path", "shape", "tp_size", "pool", "aliases", "slo", "priority"})
    pool = raw.get("pool")
    if not isinstance(pool, str) or not pool:
        v.err(f"{path}.pool", "needs the name of a pool of the `pools:` section")
        return None
    # a pooled model reads like a model with one placement, which it then does not have
    tp = raw.get("tp_size", 1)
    gpus = list(range(tp)) if isinstance(tp, int) and not isinstance(tp, bool) and tp >= 1 else [0]
    m = _model(v, path, {k: x for k, x in raw.items() if k != "pool"} | {"placements": [{"gpus": gpus}]})
    return replace(m, placements=(), pool=pool) if m is not None else None


def _pools(v: _Validator, raw: Any, models: list[ModelSpec]) -> tuple[tuple[PoolSpec, ...], list[ModelSpec]]:
    """The ``pools:`` section: ``[{name, servers: [{gpus: [0]}, ...], model_path?}]``. Each
    server becomes a hidden model ``<pool>-<j>`` with that one placement, started with the
    pool's ``model_path`` (default: its first member's)."""
    if not isinstance(raw, list):
        v.err("pools", "must be a list like [{name: llama8b, servers: [{gpus: [0]}]}]")
        return (), []
    pools, slots = [], []
    for i, pr in enumerate(raw):
        path = f"pools[{i}]"
        if not isinstance(pr, dict) or not isinstance(pr.get("name"), str) or not pr["name"]:
            v.err(path, "must be a mapping with a `name` and `servers`")
            continue
        v.keys(pr, path, {"name", "servers", "model_path"})
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
        servers = _placements(v, path, pr.get("servers"), first.tp_size) if "servers" in pr else []
        if not servers:
            v.err(f"{path}.servers", "needs a non-empty list like [{gpus: [0]}]")
            continue
        model_path = pr.get("model_path", first.model_path)
        names = tuple(f"{name}-{j}" for j in range(len(servers)))
        for slot, pl in zip(names, servers, strict=True):
            slots.append(
                replace(first, name=slot, model_path=model_path, aliases=(), placements=(pl,), pool=None, slot_of=name)
            )
        pools.append(PoolSpec(name, model_path, first.shape, names, tuple(m.name for m in members)))
    known = {pr.get("name") for pr in raw if isinstance(pr, dict)}
    for m in models:
        if m.pool is not None and m.pool not in known and raw:
            v.err(f"model {m.name!r}.pool", f"{m.pool!r} is not a pool of the `pools:` section")
        elif m.pool is not None and not raw:
            v.err(f"model {m.name!r}.pool", "the file has no `pools:` section")
    return tuple(pools), slots


def _with_lora(v: _Validator, by_index: dict[int, ModelSpec]) -> list[ModelSpec]:
    """File order; a base that adapters name gets ``lora`` limits (its own section, else the
    defaults)."""
    used = {m.base for m in by_index.values() if m.base is not None}
    out = []
    for _, m in sorted(by_index.items()):
        if m.name in used and m.lora is None:
            m = replace(m, lora=LoraLimits())
        out.append(m)
    return out


def _lora(v: _Validator, path: str, raw: Any) -> LoraLimits | None:
    """A base's ``lora:`` section (SGLang's LoRA flags; docs/configuration.md)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        v.err(path, "must be a mapping like {max_loras_per_batch: 8, max_lora_rank: 16}")
        return None
    v.keys(raw, path, {"max_loras_per_batch", "max_loaded", "max_lora_rank", "target_modules"})
    d = LoraLimits()
    per_batch = v.number(raw, "max_loras_per_batch", path, minimum=1, integer=True)
    loaded = v.number(raw, "max_loaded", path, minimum=1, integer=True)
    rank = v.number(raw, "max_lora_rank", path, minimum=1, integer=True)
    modules = raw.get("target_modules", list(d.target_modules))
    if not isinstance(modules, list) or not modules or not all(m in LORA_TARGET_MODULES for m in modules):
        v.err(f"{path}.target_modules", f"must be a non-empty list of {', '.join(LORA_TARGET_MODULES)}")
        modules = list(d.target_modules)
    n = int(per_batch) if per_batch is not None else d.max_loras_per_batch
    limits = LoraLimits(n, int(loaded) if loaded is not None else n, int(rank or d.max_lora_rank), tuple(modules))
    if limits.max_loaded < limits.max_loras_per_batch:  # SGLang asserts it at start
        v.err(f"{path}.max_loaded", f"must be at least max_loras_per_batch ({n})")
    return limits


def _slo(v: _Validator, path: str, raw: Any) -> SLO:
    if not isinstance(raw, dict):
        v.err(path, "must be a mapping like {ttft_s: 1.0, tpot_s: 0.05}")
        return SLO()
    v.keys(raw, path, {"ttft_s", "tpot_s"})
    return SLO(v.number(raw, "ttft_s", path, minimum=0), v.number(raw, "tpot_s", path, minimum=0))


def _placements(v: _Validator, path: str, raw: Any, tp_size: int) -> list[Placement]:
    if not isinstance(raw, list) or not raw:
        v.err(f"{path}.placements", "needs a non-empty list like [{gpus: [0], on: true}]")
        return []
    out = []
    for j, pr in enumerate(raw):
        pp = f"{path}.placements[{j}]"
        if not isinstance(pr, dict):
            v.err(pp, "must be a mapping like {gpus: [0], on: true, kv_pool_gb: 20}")
            continue
        v.keys(pr, pp, {"gpus", "on", "kv_pool_gb", "kv_floor_gb", "node"})
        gpus = pr.get("gpus")
        if isinstance(gpus, int) and not isinstance(gpus, bool):
            gpus = [gpus]
        if (
            not isinstance(gpus, list)
            or not gpus
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
        ):
            v.err(f"{pp}.gpus", "needs a list of GPU ids (integers >= 0), e.g. [0]")
            continue
        if len(set(gpus)) != len(gpus):
            v.err(f"{pp}.gpus", f"lists a GPU twice: {gpus}")
            continue
        if len(gpus) != tp_size:
            v.err(f"{pp}.gpus", f"has {len(gpus)} GPU(s) but tp_size is {tp_size}: give one GPU per TP rank")
            continue
        on = pr.get("on", True)
        if not isinstance(on, bool):
            v.err(f"{pp}.on", f"must be true or false (got {on!r})")
            continue
        kv = v.number(pr, "kv_pool_gb", pp, minimum=0)
        floor = v.number(pr, "kv_floor_gb", pp, minimum=0)
        if kv is not None and floor is not None and floor > kv:
            v.err(
                f"{pp}.kv_floor_gb",
                f"{floor:g} GB is above kv_pool_gb ({kv:g} GB): the floor must fit under the ceiling",
            )
            continue
        node = pr.get("node")
        if node is not None and (not isinstance(node, str) or not node):
            v.err(f"{pp}.node", f"must be the name of a node of the Ray cluster (got {node!r})")
            continue
        out.append(Placement(tuple(gpus), on, kv, floor, node))
    return out


def _check_cross(v: _Validator, models: list[ModelSpec], gpu_count: int, host: HostSpec) -> None:
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


def _check_awake_limit(v: _Validator, models: list[ModelSpec], mode: Mode, sched: SchedulerSpec) -> None:
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


def model_from_prism(i: int, m: Any) -> Any:
    """Prism's model_configs entry -> chimera's schema (unknown Prism keys are reported)."""
    if not isinstance(m, dict):
        return m
    out: dict[str, Any] = {}
    mapping = {"model_name": "name", "model_path": "model_path", "tp_size": "tp_size"}
    for k, val in m.items():
        if k in mapping:
            out[mapping[k]] = val
        elif k == "init_placements":
            out["placements"] = [
                {
                    ("gpus" if pk == "gpu_ids" else "kv_pool_gb" if pk == "max_memory_pool_size" else pk): pv
                    for pk, pv in p.items()
                }
                if isinstance(p, dict)
                else p
                for p in (val if isinstance(val, list) else [val])
            ]
        else:
            out[k] = val
    return out
