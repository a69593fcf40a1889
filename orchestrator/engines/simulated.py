"""The ``sim`` engine: describes a simulated SGLang server process for one instance.

The child is ``python -m simsglang`` with the same SGLang flags the ``sglang``
engine passes (served name, TP size, NCCL port, metrics, memory saver with CPU backup) plus
``--sim-*`` knobs: the shipped shape (so the sim never guesses the model's size), the host's GPU
memory, and speed / boot delay from chimera's environment registry.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orchestrator
from cumem_shim import settings as shim_settings
from orchestrator.config import GIB
from orchestrator.engines.base import CONFIG_FLAG, LaunchRequest, LaunchSpec, served_name
from orchestrator.env import Env, engine_environ
from orchestrator.perf.model import kv_bytes_per_token_per_gpu

SIM_READY_TIMEOUT_S = 60.0  # the sim boots in ~1 s plus the configured start delay


def max_total_tokens(req: LaunchRequest) -> int | None:
    """KV pool in tokens: the shim's virtual range (SGLang sizes its pool for it), else the
    memory ledger's share if given, else the deployment's fixed pool, else the placement's
    kv_pool_gb. The virtual range is per GPU (each TP rank reserves it for its shard, as the
    shim's profile hook answers SGLang), so its tokens are counted in a shard's bytes per token;
    the other sizes are over the group."""
    model = req.instance.model
    per_gpu = kv_bytes_per_token_per_gpu(model.shape, model.tp_size)
    per_token = per_gpu * model.tp_size
    if req.shim is not None:
        return max(1, req.shim.virtual_kv_bytes // per_gpu)
    if req.kv_bytes is not None:
        return max(1, req.kv_bytes // per_token)
    if req.max_total_tokens is not None:
        return req.max_total_tokens
    if req.instance.placement.kv_pool_gb is not None:
        return max(1, int(req.instance.placement.kv_pool_gb * GIB) // per_token)
    return None


class SimEngine:
    name = "sim"
    needs_model_dir = False  # the sim reads only the shape, never weights or a tokenizer

    def launch_spec(self, req: LaunchRequest) -> LaunchSpec:
        model = req.instance.model
        env_knobs = Env.read()
        argv = [
            sys.executable,
            "-m",
            "simsglang",
            "--model-path",
            model.model_path,
            "--sim-shape",
            model.shape.name,
            "--host",
            req.listen_host,
            "--port",
            str(req.port),
            "--served-model-name",
            served_name(model.name),
            "--tp-size",
            str(model.tp_size),
            "--nccl-port",
            str(req.nccl_port),
            "--base-gpu-id",
            str(min(req.instance.gpus)),
            "--enable-metrics",
            "--enable-memory-saver",
            "--enable-weights-cpu-backup",
            "--sleep-on-idle",
            "--sim-gpu-memory-gb",
            f"{req.host.gpu_memory_gb:g}",
            "--sim-speed",
            f"{env_knobs.sim_speed:g}",
            "--sim-start-delay-s",
            f"{env_knobs.sim_start_delay_s:g}",
        ]
        if env_knobs.sim_weights_gbps > 0:
            argv += ["--sim-weights-gbps", f"{env_knobs.sim_weights_gbps:g}"]
        if model.load_format != "auto":
            argv += ["--load-format", model.load_format]
        tokens = max_total_tokens(req)
        if tokens is not None:
            argv += ["--max-total-tokens", str(tokens)]
        if req.max_running_requests is not None:
            argv += ["--max-running-requests", str(req.max_running_requests)]
        if req.cuda_graph_max_bs is not None:  # as for SGLang: a larger decode batch runs eagerly
            argv += ["--cuda-graph-max-bs", str(req.cuda_graph_max_bs)]
        if model.lora is not None:  # the same LoRA flags as SGLang's (sglang/lora.py)
            from orchestrator.sglang.lora import lora_flags

            argv += lora_flags(model.lora)
        argv += model.engine_args
        if req.config_file is not None:  # the API key, as for SGLang (sglang/auth.py)
            argv += [CONFIG_FLAG, req.config_file]
        env = {
            k: v
            for k, v in engine_environ(os.environ).items()
            if k != "PROMETHEUS_MULTIPROC_DIR" and k not in shim_settings.PER_SERVER
        }
        # the child must import this very package, wherever chimera runs from
        root = str(Path(orchestrator.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        if req.shim:  # the sim's shim channel reads the same variables (sim/shim_channel.py)
            env.update(
                shim_settings.server_env(
                    req.shim.socket, req.shim.limit_bytes, req.shim.virtual_kv_bytes, tp_size=req.shim.tp_size
                )
            )
        return LaunchSpec(
            argv=tuple(argv),
            env=env,
            base_url=f"http://{req.listen_host}:{req.port}",
            served_name=served_name(model.name),
            ready_timeout_s=SIM_READY_TIMEOUT_S + env_knobs.sim_start_delay_s,
        )
