"""``python -m simsglang``: start one SIMULATED SGLang server.

Takes SGLang's launch_server flags that chimera uses (others that only tune a real GPU are
accepted and ignored) plus ``--sim-*`` knobs. Bad flags exit 2 with argparse's message; a model
that cannot fit the simulated GPU exits 1, as the real server would fail at startup.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from orchestrator.perf import calibration as cal
from orchestrator.perf.model import MemoryPlanError, plan_memory
from orchestrator.shapes import ShapeError, resolve_shape
from simsglang.lora import DEFAULT_MAX_LORAS_PER_BATCH, LoraSettings, check_settings, parse_lora_paths

# SGLang flags accepted for compatibility and ignored: (flag, takes a value)
IGNORED_FLAGS: tuple[tuple[str, bool], ...] = (
    ("--sleep-on-idle", False),
    ("--load-format", True),
    ("--nccl-port", True),
    ("--base-gpu-id", True),
    ("--attention-backend", True),
    ("--sampling-backend", True),
    ("--grammar-backend", True),
    ("--disable-prefill-cuda-graph", False),
    ("--skip-server-warmup", False),
    ("--log-level", True),
    ("--trust-remote-code", False),
    ("--dtype", True),
    ("--tokenizer-path", True),
    ("--random-seed", True),
    ("--schedule-policy", True),
    ("--disable-radix-cache", False),
    ("--enable-cache-report", False),
    ("--page-size", True),
    ("--kv-cache-dtype", True),
    ("--quantization", True),
    ("--stream-interval", True),
    ("--watchdog-timeout", True),
    ("--disable-custom-all-reduce", False),
    ("--enable-p2p-check", False),
    ("--allow-auto-truncate", False),
    ("--device", True),
    ("--dist-init-addr", True),
)


def _positive(kind: type[int] | type[float], allow_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            val = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if val < 0 or (val == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return val

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simsglang",
        description="A SIMULATED SGLang server (no GPU): SGLang's HTTP API, metrics and park/wake "
        "routes over a latency and memory model of an H100.",
    )
    p.add_argument(
        "--model-path", required=True, help="a shipped shape name, a known model id, or a directory with config.json"
    )
    p.add_argument("--sim-shape", help="shipped shape to simulate (default: from --model-path)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive(int), default=30000)
    p.add_argument("--served-model-name", help="the `model` name served (default: --model-path)")
    p.add_argument("--tp-size", "--tensor-parallel-size", "--tp", dest="tp_size", type=_positive(int), default=1)
    p.add_argument(
        "--mem-fraction-static",
        type=_positive(float),
        help="fraction of GPU memory for weights + KV (default: SGLang's for the GPU)",
    )
    p.add_argument("--max-total-tokens", type=_positive(int), help="cap of the KV pool in tokens")
    p.add_argument("--max-running-requests", type=_positive(int))
    p.add_argument("--chunked-prefill-size", type=_positive(int))
    p.add_argument("--context-length", type=_positive(int))
    p.add_argument(
        "--cuda-graph-max-bs",
        type=_positive(int),
        help="decode batches above it run eagerly, slower (default: SGLang's for the GPU size)",
    )
    p.add_argument("--disable-cuda-graph", action="store_true", help="every decode batch runs eagerly")
    p.add_argument("--enable-metrics", action="store_true", help="serve /metrics")
    p.add_argument(
        "--enable-memory-saver",
        action="store_true",
        help="let /release_memory_occupation free memory (else it is a no-op)",
    )
    p.add_argument(
        "--enable-weights-cpu-backup",
        action="store_true",
        help="keep released weights on the host (else they come back as garbage)",
    )
    p.add_argument("--weight-version", default="default")
    # LoRA (simsglang/lora.py): SGLang's flags and defaults
    p.add_argument("--enable-lora", action="store_true", default=None)
    p.add_argument("--max-loras-per-batch", type=int, default=DEFAULT_MAX_LORAS_PER_BATCH)
    p.add_argument("--max-loaded-loras", type=_positive(int))
    p.add_argument("--max-lora-rank", type=_positive(int))
    p.add_argument("--lora-target-modules", nargs="*")
    p.add_argument("--lora-paths", nargs="*", help="<PATH> or <NAME>=<PATH> per adapter")
    p.add_argument("--api-key", help="every route but /health* and /metrics needs `Authorization: Bearer KEY`")
    p.add_argument("--config", help="a YAML file of flags, merged before the command line's (SGLang's --config)")
    p.add_argument(
        "--sim-gpu-memory-gb", type=_positive(float), default=80.0, help="GiB of each simulated GPU (default 80)"
    )
    p.add_argument(
        "--sim-speed",
        type=_positive(float, allow_zero=True),
        default=1.0,
        help="time scale of modelled compute: 1 = calibrated H100, 0 = none",
    )
    p.add_argument(
        "--sim-weights-gbps",
        type=_positive(float),
        help="weights read bandwidth of /update_weights_from_disk in GB/s (default: the calibrated disk's)",
    )
    p.add_argument(
        "--sim-start-delay-s",
        type=_positive(float, allow_zero=True),
        default=0.0,
        help="simulated boot time before the port opens",
    )
    for flag, takes_value in IGNORED_FLAGS:
        if takes_value:
            p.add_argument(flag, metavar="X", help=argparse.SUPPRESS)
        else:
            p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    p.epilog = "Also accepted and ignored (they tune a real GPU): " + " ".join(f for f, _ in IGNORED_FLAGS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    from simsglang.auth import merge_config

    try:  # before parsing, as SGLang's prepare_server_args does
        merged = merge_config(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    args = parser.parse_args(merged)
    if args.mem_fraction_static is not None and args.mem_fraction_static > 1:
        parser.error(f"--mem-fraction-static must be in (0, 1], got {args.mem_fraction_static}")
    try:
        shape = resolve_shape(args.model_path, args.sim_shape)
    except ShapeError as exc:
        parser.error(str(exc))

    from simsglang.server import SimSettings, create_app

    paths = parse_lora_paths(args.lora_paths)
    lora = LoraSettings(
        enabled=bool(args.enable_lora) or (args.enable_lora is None and bool(paths)),  # --lora-paths implies it
        max_loras_per_batch=args.max_loras_per_batch,
        max_loaded_loras=args.max_loaded_loras,
        max_lora_rank=args.max_lora_rank,
        target_modules=tuple(args.lora_target_modules or ()),
        paths=paths,
    )
    if (problem := check_settings(lora)) is not None:  # SGLang asserts in ServerArgs: exit 1
        print(f"AssertionError: {problem}", file=sys.stderr)
        return 1
    settings = SimSettings(
        shape=shape,
        model_path=args.model_path,
        served_name=args.served_model_name or args.model_path,
        tp_size=args.tp_size,
        gpu_memory_gb=args.sim_gpu_memory_gb,
        mem_fraction_static=args.mem_fraction_static,
        max_total_tokens=args.max_total_tokens,
        max_running_requests=args.max_running_requests,
        chunked_prefill_size=args.chunked_prefill_size,
        context_length=args.context_length,
        cuda_graph_max_bs=0 if args.disable_cuda_graph else args.cuda_graph_max_bs,
        speed=args.sim_speed,
        start_delay_s=args.sim_start_delay_s,
        enable_metrics=args.enable_metrics,
        enable_memory_saver=args.enable_memory_saver,
        enable_weights_cpu_backup=args.enable_weights_cpu_backup,
        host=args.host,
        port=args.port,
        weight_version=args.weight_version,
        api_key=args.api_key,
        lora=lora,
        weights_load_bw=args.sim_weights_gbps * 1e9 if args.sim_weights_gbps else None,
    )
    try:
        plan = plan_memory(
            shape,
            tp_size=args.tp_size,
            gpu_memory_gb=args.sim_gpu_memory_gb,
            mem_fraction_static=args.mem_fraction_static,
            max_total_tokens=args.max_total_tokens,
        )
    except MemoryPlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"SIMULATED SGLang {cal.SGLANG_VERSION} server (chimera sim engine, no GPU): "
        f"{settings.served_name!r} = shape {shape.name}, tp {args.tp_size}, "
        f"{args.sim_gpu_memory_gb:g} GiB/GPU, KV {plan.kv_capacity_tokens} tokens, "
        f"speed x{args.sim_speed:g}, on http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )

    import uvicorn

    uvicorn.run(
        create_app(settings), host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
