"""Validators of the placements file, one per section (host, idle, auth, hold, restart, liveness,
scheduler, models and their placements and SLOs): each returns its dataclass and records problems."""

from __future__ import annotations

from typing import Any

from orchestrator.config.spec import (
    SLO,
    HoldLimits,
    HostSpec,
    Idle,
    LivenessLimits,
    ModelSpec,
    Placement,
    RestartLimits,
    SchedulerSpec,
)
from orchestrator.config.validator import Validator, name_problem
from orchestrator.shapes import ModelShape, ShapeError, resolve_shape
from orchestrator.types import (
    GPU_SHARING_OPTIONS,
    LOAD_FORMATS,
    ON_LATE,
    PARK_WHEN_IDLE,
    LoraLimits,
)


def section_host(v: Validator, raw: Any) -> HostSpec:
    if not isinstance(raw, dict):
        v.err("host", "must be a mapping like {gpus: 2, gpu_memory_gb: 80}")
        return HostSpec()
    v.keys(raw, "host", {"gpus", "gpu_memory_gb", "host_memory_gb", "gpu_sharing"})
    gpus = v.number(raw, "gpus", "host", minimum=1, integer=True)
    mem = v.number(raw, "gpu_memory_gb", "host", minimum=1)
    ram = v.number(raw, "host_memory_gb", "host", minimum=1)
    default = HostSpec.gpu_sharing
    sharing = v.one_of(raw.get("gpu_sharing", default), "host.gpu_sharing", GPU_SHARING_OPTIONS, default)
    return HostSpec(
        gpus=int(gpus) if gpus is not None else None,
        gpu_memory_gb=mem if mem is not None else 80.0,
        host_memory_gb=ram if ram is not None else 512.0,
        gpu_sharing=sharing,
    )


MODEL_KEYS = {
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


def section_idle(v: Validator, path: str, raw: Any, default: Idle) -> Idle:
    if not isinstance(raw, dict):
        v.err(path, "must be a mapping like {park_after_s: 45, when: needed}")
        return default
    v.keys(raw, path, {"park_after_s", "when"})
    after = v.number(raw, "park_after_s", path, minimum=0)
    when = v.one_of(raw.get("when", default.when), f"{path}.when", PARK_WHEN_IDLE, default.when)
    return Idle(after if after is not None else default.park_after_s, when)


def section_auth(v: Validator, raw: Any) -> str | None:
    """``auth: {api_keys_file: keys.yaml}``: where the client keys are (never the keys)."""
    if not isinstance(raw, dict):
        v.err("auth", "must be a mapping like {api_keys_file: keys.yaml}")
        return None
    v.keys(raw, "auth", {"api_keys_file"})
    path = raw.get("api_keys_file")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        v.err("auth.api_keys_file", f"must be a file path (got {path!r})")
        return None
    return path


def section_hold(v: Validator, raw: Any) -> HoldLimits:
    if not isinstance(raw, dict):
        v.err("hold", "must be a mapping like {per_model: 256, total: 1024}")
        return HoldLimits()
    v.keys(raw, "hold", {"per_model", "total"})
    per = v.number(raw, "per_model", "hold", minimum=1, integer=True)
    tot = v.number(raw, "total", "hold", minimum=1, integer=True)
    return HoldLimits(int(per) if per is not None else 256, int(tot) if tot is not None else 1024)


def section_restart(v: Validator, raw: Any) -> RestartLimits:
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


def section_liveness(v: Validator, raw: Any) -> LivenessLimits:
    d = LivenessLimits()
    if not isinstance(raw, dict):
        v.err("liveness", "must be a mapping like {window_s: 10, probe_timeout_s: 5}")
        return d
    v.keys(raw, "liveness", {"window_s", "probe_timeout_s"})
    window = v.number(raw, "window_s", "liveness", minimum=0.1)
    probe = v.number(raw, "probe_timeout_s", "liveness", minimum=0.1)
    return LivenessLimits(d.window_s if window is None else window, d.probe_timeout_s if probe is None else probe)


def section_scheduler(v: Validator, raw: Any) -> SchedulerSpec:
    if not isinstance(raw, dict):
        v.err("scheduler", "must be a mapping like {tau: 0.3, on_late: shed}")
        return SchedulerSpec()
    v.keys(raw, "scheduler", {"tau", "on_late", "max_awake_per_gpu", "wake_room_s", "starvation_s", "starvation_max_s"})
    tau = v.number(raw, "tau", "scheduler", minimum=0)
    on_late = v.one_of(raw.get("on_late", "shed"), "scheduler.on_late", ON_LATE, "shed")
    awake = v.number(raw, "max_awake_per_gpu", "scheduler", minimum=1, integer=True)
    room = v.number(raw, "wake_room_s", "scheduler", minimum=0)
    starve = v.number(raw, "starvation_s", "scheduler", minimum=0)
    starve_max = v.number(raw, "starvation_max_s", "scheduler", minimum=0)
    base = starve if starve is not None else SchedulerSpec.starvation_s
    cap = starve_max if starve_max is not None else SchedulerSpec.starvation_max_s
    if cap < base:
        v.err(
            "scheduler.starvation_max_s",
            f"must be >= scheduler.starvation_s ({base:g}): it bounds the longest wait, the other the shortest",
        )
    return SchedulerSpec(
        tau if tau is not None else SchedulerSpec.tau,
        on_late,
        int(awake) if awake is not None else None,
        room if room is not None else SchedulerSpec.wake_room_s,
        base,
        max(cap, base),
    )


def section_model(v: Validator, path: str, raw: Any, idle_default: Idle) -> ModelSpec | None:
    if not isinstance(raw, dict):
        v.err(path, "must be a mapping with at least `name`, `model_path` and `placements`")
        return None
    v.keys(raw, path, MODEL_KEYS)
    n_before = len(v.problems)
    name = raw.get("name")
    if (why := name_problem(name)) is not None:
        v.err(f"{path}.name", f"{why}: the id clients send as `model`")
    model_path = raw.get("model_path")
    if not isinstance(model_path, str) or not model_path:
        v.err(f"{path}.model_path", "needs a model directory or a known model id")
    tp = v.number(raw, "tp_size", path, minimum=1, integer=True)
    tp_size = int(tp) if tp is not None else 1
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list):
        v.err(f"{path}.aliases", "must be a list of names")
        aliases = []
    for k, a in enumerate(aliases):
        if (why := name_problem(a)) is not None:
            v.err(f"{path}.aliases[{k}]", why)
    load_format = v.one_of(raw.get("load_format", "auto"), f"{path}.load_format", LOAD_FORMATS, "auto")
    engine_args = raw.get("engine_args", [])
    if not isinstance(engine_args, list) or not all(isinstance(a, str) for a in engine_args):
        v.err(f"{path}.engine_args", "must be a list of strings, e.g. ['--chunked-prefill-size', '4096']")
        engine_args = []
    priority = v.number(raw, "priority", path, minimum=0, integer=True)
    slo = section_slo(v, f"{path}.slo", raw.get("slo", {}))
    idle = section_idle(v, f"{path}.idle", raw.get("idle", {}), idle_default)
    placements = section_placements(v, path, raw.get("placements"), tp_size)
    lora = section_lora(v, f"{path}.lora", raw.get("lora"))
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


def section_lora(v: Validator, path: str, raw: Any) -> LoraLimits | None:
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


def section_slo(v: Validator, path: str, raw: Any) -> SLO:
    if not isinstance(raw, dict):
        v.err(path, "must be a mapping like {ttft_s: 1.0, tpot_s: 0.05}")
        return SLO()
    v.keys(raw, path, {"ttft_s", "tpot_s"})
    return SLO(v.number(raw, "ttft_s", path, minimum=0), v.number(raw, "tpot_s", path, minimum=0))


def section_placements(v: Validator, path: str, raw: Any, tp_size: int) -> list[Placement]:
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
