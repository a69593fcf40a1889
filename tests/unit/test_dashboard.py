"""The dashboard: its bounded history, the histogram quantile, the snapshot built from views,
deployment facts and metrics, and its routes on the proxy app."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from orchestrator.config import GIB, parse_config
from orchestrator.dashboard import readings, state
from orchestrator.dashboard.history import History
from orchestrator.dashboard.routes import Dashboard
from orchestrator.deployment import Deployment, derive
from orchestrator.metrics import ChimeraMetrics
from orchestrator.types import InstanceState, InstanceView, ModelView
from tests.unit.control_fakes import Clock

S = InstanceState


def deployment(mode: str = "full") -> Deployment:
    raw: dict[str, Any] = {
        "mode": mode,
        "host": {"gpus": 1, "gpu_memory_gb": 80},
        "models": [
            {
                "name": "a",
                "model_path": "meta-llama/Llama-3.2-1B-Instruct",
                "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
                "placements": [{"gpus": [0], "on": True}],
            },
            {
                "name": "b",
                "model_path": "meta-llama/Llama-3.2-3B-Instruct",
                "placements": [{"gpus": [0], "on": False, "kv_pool_gb": 4}],
            },
        ],
    }
    return derive(parse_config(raw))


def views(dep: Deployment, states: dict[str, InstanceState]) -> list[ModelView]:
    out = []
    for name, m in dep.models.items():
        insts = tuple(
            InstanceView(iid, name, f.spec.gpus, states[iid], None)
            for iid, f in dep.instances.items()
            if f.spec.model.name == name
        )
        out.append(ModelView(m.spec, insts[0].state, insts))
    return out


def view(iid: str, st: InstanceState) -> InstanceView:
    return InstanceView(iid, iid.split("@")[0], (0,), st, None)


def test_history_records_changes_only_and_keeps_one_before_the_window() -> None:
    clock = Clock(1000.0)
    h = History(clock=clock, window_s=60)
    h.observe(view("a@gpu0", S.STARTING))
    clock.t += 10
    h.observe(view("a@gpu0", S.AWAKE))
    h.observe(view("a@gpu0", S.AWAKE))  # no change: not recorded
    clock.t += 100
    h.observe(view("a@gpu0", S.PARKING))
    # STARTING is older than the window and not the last before it: dropped
    assert h.timeline("a@gpu0") == [(1010.0, "awake"), (1110.0, "parking")]


def test_history_is_bounded_per_instance() -> None:
    clock = Clock(1000.0)
    h = History(clock=clock, per_instance=4)
    for i in range(10):
        clock.t += 1
        h.observe(view("a@gpu0", S.AWAKE if i % 2 else S.PARKED))
    assert len(h.timeline("a@gpu0")) == 4


def test_history_keeps_scheduler_decisions_from_the_log_newest_first() -> None:
    clock = Clock(1000.0)
    h = History(clock=clock, decisions=2)
    detach = h.attach()
    lg, control = logging.getLogger("chimera.scheduler"), logging.getLogger("chimera.control")
    old = lg.level, control.level
    lg.setLevel(logging.INFO)
    control.setLevel(logging.INFO)
    try:
        lg.info("scheduler: %s", "activation of a: held requests")
        lg.info("not a decision")
        clock.t += 1
        lg.info("scheduler: park of b@gpu0: idle")
        clock.t += 1
        logging.getLogger("chimera.control").info("scheduler: %s waits: %s", "c", "no room")
    finally:
        detach()
        lg.setLevel(old[0])
        control.setLevel(old[1])
    lg.info("scheduler: after detach")
    assert h.decisions() == [(1002.0, "c waits: no room"), (1001.0, "park of b@gpu0: idle")]


@pytest.mark.parametrize(
    ("q", "want"),
    [(0.25, 0.15), (0.5, 0.2), (0.99, 0.298), (1.0, 0.3)],
)
def test_quantile_interpolates_inside_the_bucket(q: float, want: float) -> None:
    # 10 observations: 5 in (0.1, 0.2], 5 in (0.2, 0.3]
    buckets = [(0.1, 0.0), (0.2, 5.0), (0.3, 10.0), (float("inf"), 10.0)]
    assert readings.quantile(q, buckets) == pytest.approx(want)


def test_quantile_without_observations_or_in_the_inf_bucket() -> None:
    assert readings.quantile(0.5, []) is None
    assert readings.quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    assert readings.quantile(0.99, [(1.0, 1.0), (float("inf"), 10.0)]) == 1.0


def test_snapshot_reads_the_same_numbers_as_metrics() -> None:
    dep = deployment()
    metrics = ChimeraMetrics()
    for _ in range(3):
        metrics.requests.labels("a", "/v1/completions", "200").inc()
    metrics.requests.labels("a", "/v1/completions", "429").inc()
    metrics.ttft.labels("a").observe(0.02)
    metrics.record("held", "b", 2)
    metrics.set_kv("a", "a@gpu0", 8 * GIB, 2 * GIB, 1000)
    h = History(clock=Clock(1000.0))
    snap = state.build(views(dep, {"a@gpu0": S.AWAKE, "b@gpu0": S.PARKED}), dep, readings.read(metrics), h, 5.0)
    a, b = snap["models"]
    assert (a["requests"], a["shed"], a["ttft"]["count"], a["ttft"]["slo"]) == (4, 1, 1, 0.5)
    assert 0.01 <= a["ttft"]["p50"] <= 0.025
    assert (b["held"], b["requests"], b["ttft"]["p50"]) == (2, 0, None)
    assert a["tpot"] == {"p50": None, "p99": None, "slo": 0.05, "count": 0}
    assert a["attainment"] == {"ttft": None, "tpot": None, "joint": None} and a["gpu_seconds"] == 0.0


def test_snapshot_shows_tpot_attainment_and_gpu_seconds_from_metrics() -> None:
    dep = deployment()
    metrics = ChimeraMetrics()
    metrics.record_slo("a", 0.1, 0.02, 0.5, 0.05)  # both met
    metrics.record_slo("a", 0.1, 0.08, 0.5, 0.05)  # TPOT missed
    metrics.record_slo("a", 0.9, None, 0.5, 0.05)  # one token: TTFT missed, no TPOT
    metrics.gpu_seconds.labels("a", "awake").inc(12.5)
    metrics.gpu_seconds.labels("a", "parked").inc(0.5)
    h = History(clock=Clock(1000.0))
    snap = state.build(views(dep, {"a@gpu0": S.AWAKE, "b@gpu0": S.PARKED}), dep, readings.read(metrics), h, 5.0)
    a, b = snap["models"]
    assert a["tpot"]["count"] == 2 and 0.015 <= a["tpot"]["p50"] <= 0.05 and a["tpot"]["p99"] > 0.05
    assert a["attainment"] == {"ttft": pytest.approx(2 / 3), "tpot": 0.5, "joint": pytest.approx(1 / 3)}
    assert a["gpu_seconds"] == 13.0 and b["gpu_seconds"] == 0.0


def test_gpu_memory_by_kind_from_the_shim_and_the_deployment() -> None:
    dep = deployment()
    metrics = ChimeraMetrics()
    metrics.set_kv("a", "a@gpu0", 8 * GIB, 2 * GIB, 1000)
    snap = state.build(views(dep, {"a@gpu0": S.AWAKE, "b@gpu0": S.PARKED}), dep, readings.read(metrics), History(), 0.0)
    (gpu,) = snap["gpus"]
    parts = {(p[0], p[2]): p[3] for p in gpu["parts"]}
    fa = dep.instances["a@gpu0"]
    used = 1000 * fa.cost.kv_bytes_per_token
    assert parts[("a@gpu0", "kv_used")] == used
    assert parts[("a@gpu0", "kv_mapped")] == 2 * GIB - used
    assert parts[("a@gpu0", "weights")] == fa.spec.model.shape.weight_bytes
    # parked: its CUDA context only
    assert [k for (i, k) in parts if i == "b@gpu0"] == ["runtime"]
    assert parts[("b@gpu0", "runtime")] == dep.instances["b@gpu0"].cost.parked_bytes
    assert gpu["free"] == gpu["capacity"] - sum(parts.values())


def test_a_stopped_instance_holds_nothing_and_a_fixed_pool_counts_whole() -> None:
    dep = deployment("static")
    r = readings.read(ChimeraMetrics())
    fb = dep.instances["b@gpu0"]
    assert state.instance_memory(S.STOPPED, fb, r) == []
    assert dict(state.instance_memory(S.AWAKE, fb, r))["kv_mapped"] == 4 * GIB


def test_recent_wake_and_park_times_come_from_the_timeline() -> None:
    dep = deployment()
    clock = Clock(1000.0)
    h = History(clock=clock)
    for st, dt in [(S.AWAKE, 0), (S.PARKING, 5), (S.PARKED, 1.5), (S.WAKING, 20), (S.AWAKE, 0.75)]:
        clock.t += dt
        h.observe(view("b@gpu0", st))
    snap = state.build(
        views(dep, {"a@gpu0": S.AWAKE, "b@gpu0": S.AWAKE}), dep, readings.read(ChimeraMetrics()), h, clock.t
    )
    b = snap["models"][1]
    assert (b["parks"], b["wakes"]) == ([1.5], [0.75])
    assert [s for _, s in b["timeline"]["b@gpu0"]] == ["awake", "parking", "parked", "waking", "awake"]


def test_routes_serve_the_page_the_state_and_only_known_files() -> None:
    dep = deployment()
    states = {"a@gpu0": S.AWAKE, "b@gpu0": S.PARKED}
    dash = Dashboard(dep, lambda: views(dep, states), ChimeraMetrics(), clock=Clock(1000.0))
    client = TestClient(Starlette(routes=dash.routes()))
    for path in ("/", "/dashboard"):
        page = client.get(path)
        assert page.status_code == 200 and "/dashboard/static/dashboard.js" in page.text
    assert client.get("/dashboard/static/uPlot.iife.min.js").status_code == 200
    assert client.get("/dashboard/static/..%2Fstate.py").status_code == 404
    missing = client.get("/dashboard/static/state.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    snap = client.get("/dashboard/state").json()
    assert [m["state"] for m in snap["models"]] == ["awake", "parked"]
    # seeded from the views at construction: the timeline starts with the states at start
    assert snap["models"][1]["timeline"]["b@gpu0"] == [[1000.0, "parked"]]


def test_the_fast_read_agrees_with_the_public_collect_path() -> None:
    metrics = ChimeraMetrics()
    metrics.requests.labels("a", "/v1/completions", "200").inc(3)
    metrics.requests.labels("a", "/generate", "429").inc(2)
    metrics.requests.labels("b", "/v1/completions", "499").inc()
    for v in (0.003, 0.2, 0.7, 900.0):
        metrics.ttft.labels("a").observe(v)
    metrics.in_flight.labels("b").set(4)
    metrics.record("held", "a", 1)
    metrics.set_kv("a", "a@gpu0", 3, 2, 1)
    fast = readings._read(metrics, readings._fast)
    assert fast == readings._read(metrics, readings._collected)
    assert fast == readings.read(metrics)
    assert fast.requests == {"a": 5.0, "b": 1.0} and fast.shed == {"a": 2.0}
    assert fast.ttft["a"][-1] == (float("inf"), 4.0)
