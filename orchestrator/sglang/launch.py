"""The ``sglang`` engine: describes one stock ``python -m sglang.launch_server`` process.

Every flag it passes exists in every supported SGLang release (tests/unit/test_contract.py
checks them against the flag lists extracted from the 0.5.17 and 0.5.23 wheels). What each
choice is for:

- GPUs: ``CUDA_VISIBLE_DEVICES`` = the placement's GPU ids (NVML/nvidia-smi numbering, hence
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID``) and ``--base-gpu-id 0``. SGLang gives TP rank r the device
  ``base_gpu_id + r * gpu_id_step`` *among the visible ones* (srt/entrypoints/engine.py), and its
  per-process re-indexing (``maybe_reindex_device_id``) indexes into CUDA_VISIBLE_DEVICES too, so
  ``[3, 5]`` puts rank 0 on GPU 3 and rank 1 on GPU 5. The server cannot touch other GPUs.
- KV pool, in absolute terms so that servers sharing a GPU can start together (see ``kv_args``
  and orchestrator/deployment.py ``start_mem``): ``--max-total-tokens`` (the ledger's
  ``kv_bytes``, else the deployment's fixed pool, else the placement's ``kv_pool_gb``) with the
  ``--mem-fraction-static`` that keeps SGLang's profile above it whatever loads beside it. With
  the elastic-KV shim (modes elastic/full) no KV flag: the shim answers SGLang's memory profile
  with its virtual range (absolute already), and the ledger moves its limit at run time
  (``shim_env``).
- ``--cuda-graph-max-bs``: the deployment's, sized from the instance's expected concurrency
  (fewer graphs to capture at start; a model's own ``engine_args`` may override it).
- ``--disable-prefill-cuda-graph``: SGLang 0.5.17 captures prefill graphs for up to
  ``--chunked-prefill-size`` tokens (58 of them at 8,192) by default, into a memory pool of
  their own. Without them six servers on the H200 held 0.74 (1B) to 1.45 GiB (7B) less each,
  6.0 GiB in all, which the KV ledger hands to KV, and started 10-20 s sooner
  (docs/benchmarks.md). Prefill then runs eagerly, as it did before prefill graphs existed. A
  model's ``engine_args`` that name any prefill graph flag keep SGLang's prefill graphs
  (``keeps_prefill_graphs``).
- Time-sharing: ``--enable-memory-saver --enable-weights-cpu-backup`` (park/wake through SGLang's
  own release/resume routes) and ``TMS_RETAIN_CPU_BACKUP=1`` (keeps the pinned host copy of the
  weights between parks: wake 0.40 s instead of 2.6-3.2 s for an 8B shape on the H100).
- ``--config FILE``: the engine's API key (sglang/auth.py), from a 0600 file so that it stays
  out of argv.
- ``--sleep-on-idle`` (an idle scheduler otherwise spins a core), ``--enable-metrics``, a
  distinct ``--nccl-port`` per instance (the default collides between servers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import cumem_shim
from cumem_shim import settings as shim_settings
from orchestrator.config import GIB, InstanceSpec, ModelSpec
from orchestrator.deployment import default_mem_fraction
from orchestrator.engines.base import LaunchRequest, LaunchSpec, ShimLaunch, served_name
from orchestrator.env import Env, engine_environ
from orchestrator.errors import ConfigError
from orchestrator.sglang.auth import CONFIG_FLAG
from orchestrator.sglang.lora import lora_flags
from orchestrator.shapes import KNOWN_MODEL_IDS, shape_dir

# Boot of a real server on the H100: 63-71 s with warm kernel caches, 158-189 s on a fresh machine.
SGLANG_READY_TIMEOUT_S = 600.0

# Flags chimera sets itself; the same flag in a model's engine_args or CHIMERA_SGLANG_ARGS would
# silently win (argparse keeps the last value) and break the supervisor's bookkeeping.
MANAGED_FLAGS = frozenset(
    {
        "--model-path",
        "--model",
        "--host",
        "--port",
        "--served-model-name",
        "--tp-size",
        "--tensor-parallel-size",
        "--nccl-port",
        "--base-gpu-id",
        "--gpu-id-step",
        "--max-total-tokens",
        "--mem-fraction-static",
        "--load-format",
        "--config",  # the API key's file (sglang/auth.py): one --config only
        "--api-key",
        "--admin-api-key",
        "--enable-lora",  # the model's `lora:` section (sglang/lora.py)
        "--max-loras-per-batch",
        "--max-loaded-loras",
        "--max-lora-rank",
        "--lora-target-modules",
        "--lora-paths",  # adapters are models of the placements file, loaded on first use
    }
)


class SGLangEngine:
    name = "sglang"
    needs_model_dir = True

    def __init__(self, env: Env | None = None) -> None:
        self.env = env if env is not None else Env.read()

    def launch_spec(self, req: LaunchRequest) -> LaunchSpec:
        inst = req.instance
        model = inst.model
        _check_passthrough(model, self.env.sglang_extra_args)
        argv = [
            sys.executable,
            "-m",
            "sglang.launch_server",
            "--model-path",
            req.model_dir or model_path(model),
            "--host",
            req.listen_host,
            "--port",
            str(req.port),
            "--served-model-name",
            served_name(model.name),
            "--tp-size",
            str(model.tp_size),
            "--base-gpu-id",
            "0",
            "--nccl-port",
            str(req.nccl_port),
            "--enable-metrics",
            "--enable-memory-saver",
            "--enable-weights-cpu-backup",
            "--sleep-on-idle",
            *([] if req.shim else kv_args(req)),  # with the shim, its virtual range sizes the pool
        ]
        if req.cuda_graph_max_bs is not None:
            argv += ["--cuda-graph-max-bs", str(req.cuda_graph_max_bs)]
        if req.max_running_requests is not None:
            argv += ["--max-running-requests", str(req.max_running_requests)]
        if not keeps_prefill_graphs([*self.env.sglang_extra_args, *model.engine_args]):
            argv.append("--disable-prefill-cuda-graph")
        if model.load_format == "dummy":
            argv += ["--load-format", "dummy"]
        if model.lora is not None:  # it serves LoRA adapters as models (sglang/lora.py)
            argv += lora_flags(model.lora)
        argv += [*self.env.sglang_extra_args, *model.engine_args]  # the model's own args win
        if req.config_file is not None:  # the API key, read from the file (sglang/auth.py)
            argv += [CONFIG_FLAG, req.config_file]
        return LaunchSpec(
            argv=tuple(argv),
            env=child_env(inst, engine_environ(os.environ), req.shim),
            base_url=f"http://{req.listen_host}:{req.port}",
            served_name=served_name(model.name),
            ready_timeout_s=SGLANG_READY_TIMEOUT_S,
        )


def keeps_prefill_graphs(args: list[str]) -> bool:
    """True when ``args`` set SGLang's prefill CUDA graphs themselves (any of its
    ``--cuda-graph-*-prefill`` / ``--*prefill-cuda-graph`` flags): chimera then leaves them on."""
    return any(a.startswith("--") and "prefill" in a and "cuda-graph" in a for a in (x.split("=")[0] for x in args))


def model_path(model: ModelSpec) -> str:
    """What SGLang loads. A known public id or a shipped shape name with ``load_format: dummy``
    becomes the shape's directory (its config.json; the weights are random, so no download);
    anything else, dummy or not, is passed as given (a local directory or a hub id). The
    supervisor passes a materialized directory (with a tokenizer) as ``req.model_dir`` instead."""
    if model.load_format == "dummy" and (model.model_path in KNOWN_MODEL_IDS or model.model_path == model.shape.name):
        return str(shape_dir(model.shape.name))
    return model.model_path


def kv_bytes_per_token_group(model: ModelSpec) -> int:
    """KV bytes one token slot takes across the whole TP group. Each rank holds
    ``max(1, kv_heads // tp)`` heads (SGLang's ``get_num_kv_heads``): heads are replicated
    when TP exceeds them, so the group total can exceed the model's own per-token size."""
    s = model.shape
    heads_per_rank = max(1, s.num_kv_heads // model.tp_size)
    return 2 * s.num_layers * heads_per_rank * s.head_dim * s.dtype_bytes * model.tp_size


def kv_args(req: LaunchRequest) -> list[str]:
    """SGLang's KV sizing flags for one instance.

    Sizes are per instance, summed over its GPUs. ``kv_bytes`` (the ledger) wins over the
    deployment's ``max_total_tokens``, which wins over ``kv_pool_gb`` (the placements file;
    GB = GiB = 2**30 bytes, as in SGLang's own memory logs and ``config.GIB``; Prism's
    ``max_memory_pool_size`` maps to it). SGLang treats ``--max-total-tokens`` as a ceiling: it
    still profiles free memory at start (``free_after_weights - free_before * (1 - fraction)``)
    and takes the smaller value, with a warning, or fails "Not enough memory" when the profile
    finds nothing. ``req.mem_fraction_static`` is the fraction under which the profile covers
    the pool even if every other server of the GPU loads between its two readings; without a
    cap, the default fraction alone sizes the pool (the pre-concurrency behaviour).
    """
    model = req.instance.model
    tokens: int | None = req.max_total_tokens
    if req.kv_bytes is not None:
        tokens = max(1, req.kv_bytes // kv_bytes_per_token_group(model))
    elif tokens is None and req.instance.placement.kv_pool_gb is not None:
        tokens = max(1, int(req.instance.placement.kv_pool_gb * GIB) // kv_bytes_per_token_group(model))
    if tokens is None:
        return ["--mem-fraction-static", f"{mem_fraction_static(req):.3f}"]
    args = ["--max-total-tokens", str(tokens)]
    if req.mem_fraction_static is not None:
        args += ["--mem-fraction-static", f"{req.mem_fraction_static:.3f}"]
    return args


def mem_fraction_static(req: LaunchRequest) -> float:
    """The fraction alone sizes the pool: the deployment's if it gave one, else the default."""
    if req.mem_fraction_static is not None:
        return req.mem_fraction_static
    return default_mem_fraction(req.instance.model, req.host)


def child_env(inst: InstanceSpec, parent: Mapping[str, str], shim: ShimLaunch | None = None) -> dict[str, str]:
    """The server's full environment: the parent's, minus what would merge servers, plus the
    GPU pinning, the knobs stock SGLang needs for time-sharing and, with the shim, its settings
    and a PYTHONPATH on which the server's Python finds the plugin (shim_env)."""
    env = {
        k: v
        for k, v in parent.items()  # else metrics merge / another server's shim
        if k != "PROMETHEUS_MULTIPROC_DIR" and k not in shim_settings.PER_SERVER
    }
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA ids = NVML ids = the placements file's ids
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in inst.gpus)
    env["TMS_RETAIN_CPU_BACKUP"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # logs reach the supervisor's file as they happen
    if len(inst.gpus) > 1:
        # SGLang refuses to start a TP group whose GPUs have unequal free memory (>10% apart),
        # which is the normal case when other models share some of them.
        env["SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK"] = "0"
    if shim is not None:
        env.update(shim_env(shim, env.get("PYTHONPATH")))
    return env


def shim_env(shim: ShimLaunch, pythonpath: str | None) -> dict[str, str]:
    """cumem_shim's variables (``cumem_shim.settings``: setting them is what turns it on; the
    plugin refuses to start rather than run unpatched) and the import path of the plugin: this
    package's root and, where chimera is not pip-installed, a directory registering the entry
    point."""
    root = str(Path(cumem_shim.__file__).resolve().parent.parent)
    paths = [p for p in (shim.entry_point_dir, root, pythonpath) if p]
    return {
        **shim_settings.server_env(shim.socket, shim.limit_bytes, shim.virtual_kv_bytes, tp_size=shim.tp_size),
        "PYTHONPATH": os.pathsep.join(paths),
    }


def _check_passthrough(model: ModelSpec, extra: tuple[str, ...]) -> None:
    problems = []
    for source, args in (("CHIMERA_SGLANG_ARGS", extra), (f"{model.name}.engine_args", model.engine_args)):
        for a in args:
            flag = a.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                problems.append(
                    f"{source}: {flag} is set by chimera per instance; remove it "
                    "(use the placement's kv_pool_gb / gpus, or the model's fields)"
                )
    if problems:
        raise ConfigError(problems)
