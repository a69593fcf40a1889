"""The part of SGLang's HTTP API that chimera uses: routes, request bodies, metric names.

Every route and metric here exists, unchanged, in every supported SGLang release (0.5.17 and
0.5.23); tests/unit/test_contract.py checks that against the contract files extracted from the
wheels, and tests/unit/test_contract_sim.py checks that the sim engine serves the same.

Notes from the two releases (see orchestrator/sglang/contract/):
- ``/server_info`` and ``/model_info`` exist in both; ``/get_server_info`` and
  ``/get_model_info`` also exist in both but log a deprecation warning on every call in 0.5.23.
  ``/health`` runs a real generation and fails while paused, so probe parked servers with these.
- ``/get_load`` exists only in 0.5.17 (0.5.23 removed it): use ``/v1/loads``.
- ``/ready`` exists only in 0.5.23: readiness is probed with ``/model_info`` instead.
- ``/metrics`` is mounted only with ``--enable-metrics``, and answers any method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from orchestrator.config.spec import flag_int
from orchestrator.sglang.contract import MetricType


class Route(NamedTuple):
    path: str
    method: str


# Serving (the proxy forwards these).
GENERATE = Route("/generate", "POST")
CHAT_COMPLETIONS = Route("/v1/chat/completions", "POST")
COMPLETIONS = Route("/v1/completions", "POST")
MODELS = Route("/v1/models", "GET")
MODEL_CARD = Route("/v1/models/{model:path}", "GET")  # OpenAI's retrieve; ids may hold "/"
# Observation (the scraper and the supervisor).
LOADS = Route("/v1/loads", "GET")  # fresh shared-memory snapshot, always on
METRICS = Route("/metrics", "GET")  # needs --enable-metrics; gauges can lag seconds
HEALTH = Route("/health", "GET")  # a real 1-token generate: fails while paused
HEALTH_GENERATE = Route("/health_generate", "GET")
SERVER_INFO = Route("/server_info", "GET")  # answers while paused
MODEL_INFO = Route("/model_info", "GET")  # answers while paused: readiness probe
# Time-sharing (park / wake: orchestrator/supervisor/lifecycle.py).
PAUSE_GENERATION = Route("/pause_generation", "POST")
CONTINUE_GENERATION = Route("/continue_generation", "POST")
RELEASE_MEMORY = Route("/release_memory_occupation", "POST")  # needs --enable-memory-saver
RESUME_MEMORY = Route("/resume_memory_occupation", "POST")
FLUSH_CACHE = Route("/flush_cache", "POST")
# Re-targeting a parked-then-woken server to a fine-tune of the same shape (never while parked:
# measured on the H100 to kill the server with a CUDA invalid-argument error).
UPDATE_WEIGHTS_FROM_DISK = Route("/update_weights_from_disk", "POST")
# A pool's pinned push (orchestrator/pools/pinned/holder.py): flattened buckets over CUDA IPC.
UPDATE_WEIGHTS_FROM_TENSOR = Route("/update_weights_from_tensor", "POST")
# LoRA adapters as models (a base started with --enable-lora; orchestrator/sglang/lora.py).
LOAD_LORA_ADAPTER = Route("/load_lora_adapter", "POST")
UNLOAD_LORA_ADAPTER = Route("/unload_lora_adapter", "POST")

ROUTES_USED: tuple[Route, ...] = (
    GENERATE,
    CHAT_COMPLETIONS,
    COMPLETIONS,
    MODELS,
    MODEL_CARD,
    LOADS,
    METRICS,
    HEALTH,
    HEALTH_GENERATE,
    SERVER_INFO,
    MODEL_INFO,
    PAUSE_GENERATION,
    CONTINUE_GENERATION,
    RELEASE_MEMORY,
    RESUME_MEMORY,
    FLUSH_CACHE,
    UPDATE_WEIGHTS_FROM_DISK,
    LOAD_LORA_ADAPTER,
    UNLOAD_LORA_ADAPTER,
)
# Called only with the sglang engine (a pool's ``stage: pinned`` needs CUDA; the sim engine, which
# serves every route above, has no tensors to take): checked against SGLang's own route lists only.
ROUTES_USED_WITH_CUDA: tuple[Route, ...] = (UPDATE_WEIGHTS_FROM_TENSOR,)

# Request bodies. ``PauseGenerationReqInput.mode`` and the memory tags are the same in both
# releases (srt/managers/io_struct.py, srt/constants.py).
PauseMode = Literal["abort", "retract", "in_place"]
PARK_PAUSE_MODE: PauseMode = "retract"  # running requests go back to the queue, KV may go
MEMORY_TAGS = ("weights", "cuda_graph", "kv_cache")
PARK_RELEASE_TAGS = ("weights", "cuda_graph")  # KV pages are unmapped by cumem_shim instead

# The ``sglang:`` metric families chimera reads, with their Prometheus type (a counter's samples
# are exposed as ``<name>_total``, a histogram's as ``_bucket``/``_sum``/``_count``). All are
# labelled per server (model_name, tp_rank, ...) and published only with --enable-metrics.
METRICS_READ: dict[str, MetricType] = {
    "sglang:num_running_reqs": "gauge",
    "sglang:num_queue_reqs": "gauge",
    "sglang:token_usage": "gauge",  # fraction of the KV pool in use
    "sglang:gen_throughput": "gauge",  # tokens/s, last logging interval
    "sglang:num_used_tokens": "gauge",
    "sglang:max_total_num_tokens": "gauge",  # KV pool size in tokens
    "sglang:cache_hit_rate": "gauge",
    "sglang:prompt_tokens": "counter",
    "sglang:generation_tokens": "counter",
    "sglang:num_requests": "counter",
    "sglang:time_to_first_token_seconds": "histogram",
    "sglang:inter_token_latency_seconds": "histogram",
    "sglang:e2e_request_latency_seconds": "histogram",
    "sglang:queue_time_seconds": "histogram",
}


def max_model_len(max_context: int, engine_args: Sequence[str]) -> int:
    """The ``max_model_len`` SGLang's model cards report: ``--context-length`` when the server
    is started with it (the last one wins, as argparse does), else the model config's
    ``max_position_embeddings`` (``max_context``, from its shape)."""
    return flag_int(engine_args, "--context-length") or max_context
