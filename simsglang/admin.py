"""Observation routes of the sim, shaped like SGLang 0.5.17's ``srt/entrypoints/http_server.py``
(health, model/server info, models), ``srt/entrypoints/v1_loads.py`` +
``srt/managers/load_snapshot.py`` (``/v1/loads``) and the prometheus exposition of
``srt/observability/metrics_collector.py`` (``/metrics``). Park/wake routes are in park.py.

Deliberate difference, towards failing fast: ``/health`` answers 503 at once while paused or
released (real SGLang's 1-token generate waits 20 s, then answers 503).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from orchestrator.perf import calibration as cal
from simsglang.api import json_response, openai_error
from simsglang.server import SimServer

LOAD_SECTIONS = {"core", "memory", "spec", "lora", "disagg", "queues", "all"}


def _sim(request: Request) -> SimServer:
    sim = request.app.state.sim
    assert isinstance(sim, SimServer)
    return sim


async def health(request: Request) -> Response:
    sim = _sim(request)
    ok = sim.up and not sim.paused and sim.memory.can_serve
    return Response(status_code=200 if ok else 503)


def _model_type(architecture: str) -> str:
    return architecture.removesuffix("ForCausalLM").lower() or "llama"


async def model_info(request: Request) -> Response:
    sim = _sim(request)
    s = sim.settings
    return json_response(
        {
            "model_path": sim.model_path,
            "tokenizer_path": s.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": sim.weight_version,
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": _model_type(s.shape.architecture),
            "architectures": [s.shape.architecture],
        }
    )


def server_args(sim: SimServer) -> dict[str, Any]:
    s, p = sim.settings, sim.plan
    return {
        "model_path": sim.model_path,
        "tokenizer_path": s.model_path,
        "served_model_name": s.served_name,
        "host": s.host,
        "port": s.port,
        "tp_size": s.tp_size,
        "dp_size": 1,
        "pp_size": 1,
        "mem_fraction_static": p.mem_fraction_static,
        "max_total_tokens": s.max_total_tokens,
        "max_running_requests": s.max_running_requests,
        "chunked_prefill_size": p.chunked_prefill_size,
        "context_length": s.context_length,
        "cuda_graph_max_bs_decode": p.cuda_graph_max_bs or None,  # 0.5.17: --cuda-graph-max-bs is its alias
        "disable_cuda_graph": p.cuda_graph_max_bs == 0,
        "page_size": 1,
        "enable_metrics": s.enable_metrics,
        "enable_memory_saver": s.enable_memory_saver,
        "enable_weights_cpu_backup": s.enable_weights_cpu_backup,
        "weight_version": sim.weight_version,
        "device": "cuda",
    }


async def server_info(request: Request) -> Response:
    sim = _sim(request)
    p, gib = sim.plan, cal.GIB
    internal = {
        **server_args(sim),
        "last_gen_throughput": sim.batcher.snapshot().gen_throughput,
        "memory_usage": {
            "weight": round(p.weight_bytes / gib, 3),
            "kvcache": round(p.kv_bytes / gib, 3),
            "startup_available": round((p.gpu_bytes - cal.STARTUP_USED_BYTES) / gib, 3),
            "token_capacity": p.kv_capacity_tokens,
            "token_capacity_swa": None,
            "graph": {"decode": round(p.cuda_graph_bytes / gib, 3)},
        },
        "startup_time": sim.startup_time,
        "effective_max_running_requests_per_dp": p.max_running_requests,
    }
    return json_response(
        {
            **server_args(sim),
            "max_total_num_tokens": p.kv_capacity_tokens,
            "max_req_input_len": sim.max_req_input_len,
            "startup_time": sim.startup_time,
            "internal_states": [internal],
            "version": cal.SGLANG_VERSION,
            "kv_events": None,
            "simulated": True,
            "sim": {
                "settings": sim.settings.as_dict(),
                "memory": sim.memory.snapshot(),
                "paused": sim.paused,
                "pause_mode": sim.batcher.pause_mode,
            },
        }
    )


def load_snapshot(sim: SimServer, include: set[str] | None) -> dict[str, Any]:
    """One LoadSnapshot.to_dict() (SGLang's key order; absent sections omitted)."""
    snap, p = sim.batcher.snapshot(), sim.plan
    total = snap.used_tokens + snap.waiting_tokens
    used = snap.used_tokens + sim.batcher.held_back_tokens()  # as a shimmed SGLang counts them
    load: dict[str, Any] = {
        "timestamp": datetime.now(UTC).timestamp(),
        "dp_rank": 0,
        "num_running_reqs": snap.num_running,
        "num_waiting_reqs": snap.num_waiting,
        "num_waiting_uncached_tokens": snap.waiting_tokens,
        "num_used_tokens": used,
        "num_total_tokens": total,
        "num_active_tokens": total,
        "max_total_num_tokens": snap.capacity,
        "max_running_requests": snap.max_running,
        "token_usage": round(used / snap.capacity, 4),
        "gen_throughput": round(snap.gen_throughput, 2),
        "cache_hit_rate": 0.0,
        "utilization": 0.0,
        "total_prefill_uncached_tokens": snap.total_prefill_tokens,
        "total_prefill_busy_us": snap.total_prefill_busy_us,
        "decode_moments": list(snap.decode_moments) if snap.decode_moments[0] > 0 else None,
    }
    if include == {"core"}:
        return load
    everything = include is None or "all" in include
    sections = {
        "memory": (
            "memory",
            {
                "weight_gb": round(p.weight_bytes / cal.GIB, 3),
                "kv_cache_gb": round(p.kv_bytes / cal.GIB, 3),
                "graph_gb": round(p.cuda_graph_bytes / cal.GIB, 3),
                "token_capacity": p.kv_capacity_tokens,
            },
        ),
        "disaggregation": (
            "disagg",
            {
                "mode": "null",
                "prefill_bootstrap_queue_reqs": 0,
                "prefill_inflight_queue_reqs": 0,
                "decode_prealloc_queue_reqs": 0,
                "decode_transfer_queue_reqs": 0,
                "decode_retracted_queue_reqs": 0,
                "kv_transfer_speed_gb_s": 0.0,
                "kv_transfer_latency_ms": 0.0,
            },
        ),
        "queues": (
            "queues",
            {
                "waiting": snap.num_waiting,
                "grammar": 0,
                "paused": snap.num_paused,
                "retracted": snap.num_retracted,
                "prealloc_ready": 0,
            },
        ),
    }
    for key, (name, section) in sections.items():
        if everything or (include and name in include):
            load[key] = section
    return load


async def loads(request: Request) -> Response:
    sim, q = _sim(request), request.query_params
    include = {s.strip() for s in q["include"].split(",")} if q.get("include") else None
    if include and not include <= LOAD_SECTIONS:
        return openai_error(
            f"Invalid include sections: {include - LOAD_SECTIONS}. Valid options: {sorted(LOAD_SECTIONS)}", "400"
        )  # HTTPException -> ErrorResponse
    dp_rank = q.get("dp_rank")
    results = [] if dp_rank not in (None, "0") else [load_snapshot(sim, include)]
    if q.get("format") == "prometheus":
        lines = []
        for key, value in (results[0] if results else {}).items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            prefix = {"disaggregation": "disagg"}.get(key, key)
            for sub, v in items:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "dp_rank":
                    name = f"sglang_{prefix}_{sub}" if sub else f"sglang_{key}"
                    lines += [f"# TYPE {name} gauge", f'{name}{{dp_rank="0"}} {v}']
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")
    return json_response(
        {
            "timestamp": datetime.now(UTC).isoformat(),
            "version": cal.SGLANG_VERSION,
            "accelerator": cal.ACCELERATOR_NAME,
            "num_accelerators": sim.settings.tp_size,
            "loads": results,
        }
    )


async def get_load(request: Request) -> Response:
    snap = _sim(request).batcher.snapshot()
    total = snap.used_tokens + snap.waiting_tokens
    return json_response(
        [
            {
                "dp_rank": 0,
                "num_reqs": snap.num_running + snap.num_waiting,
                "num_waiting_reqs": snap.num_waiting,
                "num_tokens": total,
                "num_pending_tokens": snap.waiting_tokens,
                "ts_tic": _sim(request).clock.now(),
            }
        ]
    )


async def metrics(request: Request) -> Response:
    sim = _sim(request)
    if not sim.settings.enable_metrics:  # SGLang mounts /metrics only with --enable-metrics
        return json_response({"detail": "Not Found"}, 404)
    return Response(sim.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _card(sim: SimServer, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(sim.startup_time),
        "owned_by": "sglang",
        "root": name,
        "parent": None,
        "max_model_len": sim.context_len,
    }


async def models(request: Request) -> Response:
    sim = _sim(request)
    return json_response({"object": "list", "data": [_card(sim, sim.settings.served_name)]})


async def model_card(request: Request) -> Response:
    sim, name = _sim(request), request.path_params["model"]
    if name != sim.settings.served_name:
        return json_response(
            {
                "error": {
                    "message": f"The model '{name}' does not exist",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
            },
            404,
        )
    return json_response(_card(sim, name))


def routes() -> list[Route]:
    get = ["GET"]
    return [
        Route("/health", health, methods=get),
        Route("/health_generate", health, methods=get),
        Route("/model_info", model_info, methods=get),
        Route("/get_model_info", model_info, methods=get),
        Route("/server_info", server_info, methods=get),
        Route("/get_server_info", server_info, methods=get),
        Route("/v1/loads", loads, methods=get),
        Route("/get_load", get_load, methods=get),
        Route("/metrics", metrics, methods=get),
        Route("/v1/models", models, methods=get),
        Route("/v1/models/{model:path}", model_card, methods=get),
    ]
