"""Host RAM held by weight backups: a park puts the weights' size in host RAM
(``parked_weights``), a wake keeps the backup allocated (``retained_weights``), the process going
away frees it; the dashboard's state and /metrics show the same bytes."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.dashboard.routes import Dashboard
from orchestrator.metrics import ChimeraMetrics
from orchestrator.metrics.host_memory import HostBackups, backup
from orchestrator.types import InstanceState, InstanceView, ModelView
from tests.unit.test_dashboard import Clock, deployment

S = InstanceState


def exposed(metrics: ChimeraMetrics, server: str) -> dict[str, float]:
    """``chimera_host_memory_bytes`` of ``server`` by kind, as GET /metrics renders it."""
    text = metrics.render()[0].decode()
    return {
        s.labels["kind"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "chimera_host_memory_bytes" and s.labels["server"] == server
    }


def test_backup_kind_by_state() -> None:
    assert backup(S.AWAKE, parked_before=False) is None
    assert backup(S.PARKING, parked_before=False) == "parked_weights"
    assert backup(S.WAKING, parked_before=True) == "parked_weights"
    assert backup(S.AWAKE, parked_before=True) == "retained_weights"
    assert backup(S.BACKOFF, parked_before=True) is None  # its process is gone


def test_a_park_shows_the_weights_in_host_ram_on_the_dashboard_and_in_metrics() -> None:
    dep = deployment()  # b (Llama-3.2-3B) on GPU 0, parked at warm start
    weights = dep.instances["b@gpu0"].host_backup_bytes
    assert weights == dep.instances["b@gpu0"].spec.model.shape.weight_bytes > 5 << 30
    metrics = ChimeraMetrics()
    host = HostBackups(dep.instances, metrics.host_memory)
    current = {"a@gpu0": S.AWAKE, "b@gpu0": S.STOPPED}

    def models() -> list[ModelView]:
        out = []
        for name, m in dep.models.items():
            insts = tuple(InstanceView(iid, name, (0,), st, None) for iid, st in current.items() if iid[0] == name)
            out.append(ModelView(m.spec, insts[0].state, insts))
        return out

    dash = Dashboard(dep, models, metrics, clock=Clock())

    def to(state: InstanceState) -> dict[str, object]:
        current["b@gpu0"] = state
        host.observe(InstanceView("b@gpu0", "b", (0,), state, None))
        return dash.snapshot()

    for st in (S.PENDING, S.STARTING, S.AWAKE):
        snap = to(st)
    assert exposed(metrics, "b@gpu0") == {"parked_weights": 0, "retained_weights": 0}
    assert snap["host"] == {"held": 0, "parts": []}

    to(S.PARKING)
    snap = to(S.PARKED)
    assert exposed(metrics, "b@gpu0") == {"parked_weights": weights, "retained_weights": 0}
    assert snap["host"] == {"held": weights, "parts": [["b@gpu0", "b", "parked_weights", weights]]}
    assert snap["gpus"][0]["host"] == [["b@gpu0", "b", "parked_weights", weights]]  # TP 1: one shard

    to(S.WAKING)
    snap = to(S.AWAKE)  # woken: nothing parked; the retained backup still holds the RAM
    assert exposed(metrics, "b@gpu0") == {"parked_weights": 0, "retained_weights": weights}
    assert snap["host"]["parts"] == [["b@gpu0", "b", "retained_weights", weights]]

    snap = to(S.BACKOFF)  # crashed: the process and its backup are gone
    assert exposed(metrics, "b@gpu0") == {"parked_weights": 0, "retained_weights": 0}
    assert snap["host"]["held"] == 0 and snap["gpus"][0]["host"] == []
    for st in (S.PENDING, S.STARTING, S.AWAKE):  # a fresh process has no backup until it parks
        snap = to(st)
    assert snap["host"]["held"] == 0
