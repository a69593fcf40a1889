"""``python -m bench.dashboard.cost``: what one dashboard page load costs chimera's proxy, at
the issue's scale (58 models on 32 GPUs, mode full).

A page load is ``GET /dashboard`` (a constant page) then one ``GET /dashboard/state`` a second
(the snapshot: reading the metrics, building the state, JSON). Both handlers run in-process on
an ASGI transport, with every model's series filled (requests, TTFT observations, KV) and a
full history (``--changes`` state changes per instance, ``--decisions`` scheduler decisions),
so the numbers are the event-loop time the proxy gives each poll; the snapshot is also timed
alone (without the HTTP layer). Prints p50/p99/max in ms (wall and CPU) and writes them as JSON (``--out``).
The target: under 5 ms per page load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from orchestrator.config import parse_config
from orchestrator.dashboard.history import History
from orchestrator.dashboard.routes import STATE_PATH, Dashboard
from orchestrator.deployment import Deployment, derive
from orchestrator.metrics import ChimeraMetrics
from orchestrator.types import InstanceState, InstanceView, ModelView

MODEL_PATHS = (
    "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
)
CYCLE = (InstanceState.AWAKE, InstanceState.PARKING, InstanceState.PARKED, InstanceState.WAKING)


def fleet(models: int, gpus: int) -> Deployment:
    """``models`` models on ``gpus`` GPUs, round-robin, the first ``gpus`` awake at start."""
    return derive(parse_config(fleet_placements(models, gpus)))


def fleet_placements(models: int, gpus: int) -> dict[str, Any]:
    """The placements file of ``fleet`` (also for ``chimera-orch up --engine sim``)."""
    return {
        "mode": "full",
        "host": {"gpus": gpus, "gpu_memory_gb": 80, "host_memory_gb": 2048},
        "models": [
            {
                "name": f"m{i:02d}",
                "model_path": MODEL_PATHS[i % len(MODEL_PATHS)],
                "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
                "placements": [{"gpus": [i % gpus], "on": i < gpus}],
            }
            for i in range(models)
        ],
    }


class Fleet:
    """Views, metrics and history of a deployment, filled as a busy run would leave them."""

    def __init__(self, dep: Deployment, changes: int, decisions: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.dep = dep
        self.metrics = ChimeraMetrics()
        self.clock_t = 0.0
        self.history = History(clock=lambda: self.clock_t)
        self.states: dict[str, InstanceState] = {}
        for iid, f in dep.instances.items():
            model = f.spec.model.name
            for status in ("200", "429", "499"):
                self.metrics.requests.labels(model, "/v1/chat/completions", status).inc(rng.randint(0, 500))
            for _ in range(50):
                self.metrics.ttft.labels(model).observe(rng.expovariate(10))
                self.metrics.record_slo(model, rng.expovariate(10), rng.expovariate(40), 0.5, 0.05)
            for st in ("awake", "parked", "waking", "parking"):
                self.metrics.gpu_seconds.labels(model, st).inc(rng.uniform(0, 600))
            self.metrics.record("held", model, rng.randint(0, 3))
            self.metrics.set_kv(model, iid, 8 << 30, rng.randint(1, 8) << 30, rng.randint(0, 100_000))
            for k in range(changes):
                self.clock_t = k * 600.0 / changes
                self.history.observe(InstanceView(iid, model, f.spec.gpus, CYCLE[k % len(CYCLE)], None))
            self.states[iid] = CYCLE[(changes - 1) % len(CYCLE)]
        for k in range(decisions):
            self.history.decide(f"scheduler: activation of m{k % 58:02d}: held requests (decision {k})")
        self.clock_t = 600.0

    def models(self) -> list[ModelView]:
        out = []
        for name, m in self.dep.models.items():
            insts = tuple(
                InstanceView(iid, name, f.spec.gpus, self.states[iid], "http://127.0.0.1:1")
                for iid, f in self.dep.instances.items()
                if f.spec.model.name == name
            )
            out.append(ModelView(m.spec, insts[0].state, insts))
        return out

    def dashboard(self) -> Dashboard:
        return Dashboard(self.dep, self.models, self.metrics, history=self.history, clock=lambda: self.clock_t)


def percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3),
        "max_ms": round(ms[-1], 3),
        "n": len(ms),
    }


async def measure(dash: Dashboard, repeat: int) -> dict[str, Any]:
    """Wall and CPU time of each call (the machine may be shared: CPU time is what the proxy's
    process spends; wall time adds what others took from it meanwhile)."""
    app = Starlette(routes=dash.routes())
    wall: dict[str, list[float]] = {"snapshot": [], "get_state": [], "get_page": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    body = b""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        for _ in range(repeat):
            for key in wall:
                w, c = time.perf_counter(), time.process_time()
                if key == "snapshot":
                    dash.snapshot()
                elif key == "get_state":
                    body = (await client.get(STATE_PATH)).content
                else:
                    await client.get("/dashboard")
                wall[key].append((time.perf_counter() - w) * 1e3)
                cpu[key].append((time.process_time() - c) * 1e3)
    load = [s + p for s, p in zip(wall["get_state"], wall["get_page"], strict=True)]
    load_cpu = [s + p for s, p in zip(cpu["get_state"], cpu["get_page"], strict=True)]
    return {
        **{k: {"wall": percentiles(wall[k]), "cpu": percentiles(cpu[k])} for k in wall},
        "page_load": {"wall": percentiles(load), "cpu": percentiles(load_cpu)},
        "state_bytes": len(body),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=58)
    p.add_argument("--gpus", type=int, default=32)
    p.add_argument("--changes", type=int, default=40, help="state changes per instance in the history")
    p.add_argument("--decisions", type=int, default=50)
    p.add_argument("--repeat", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("runs/dashboard-cost.json"))
    args = p.parse_args(argv)
    fl = Fleet(fleet(args.models, args.gpus), args.changes, args.decisions)
    result = {
        "models": args.models,
        "gpus": args.gpus,
        "changes_per_instance": args.changes,
        "decisions": args.decisions,
        **asyncio.run(measure(fl.dashboard(), args.repeat)),
    }
    for key in ("snapshot", "get_state", "get_page", "page_load"):
        w, c = result[key]["wall"], result[key]["cpu"]
        print(
            f"{key:<10} wall p50 {w['p50_ms']:.3f} p99 {w['p99_ms']:.3f} ms | "
            f"cpu p50 {c['p50_ms']:.3f} p99 {c['p99_ms']:.3f} ms  (n={w['n']})"
        )
    print(f"page load = GET /dashboard + GET {STATE_PATH} ({result['state_bytes']} bytes); target < 5 ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
