"""ChimeraMetrics: its own registry, names and units, instance state as a one-hot gauge."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import ChimeraMetrics
from orchestrator.types import InstanceState


def states(m: ChimeraMetrics, instance: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(m.render()[0].decode()):
        for s in family.samples:
            if s.name == "chimera_instance_state" and s.labels["server"] == instance:
                out[s.labels["state"]] = s.value
    return out


def test_set_instance_state_zeroes_the_other_states() -> None:
    m = ChimeraMetrics()
    m.set_instance_state("llama", "llama@gpu0+1", (0, 1), "waking")
    m.set_instance_state("llama", "llama@gpu0+1", (0, 1), InstanceState.AWAKE)
    m.set_instance_state("qwen", "qwen@gpu2", (2,), "parked")
    llama = states(m, "llama@gpu0+1")
    assert set(llama) == {s.value for s in InstanceState}
    assert llama == {s.value: (1.0 if s is InstanceState.AWAKE else 0.0) for s in InstanceState}
    assert states(m, "qwen@gpu2")["parked"] == 1
    assert (
        m.registry.get_sample_value(
            "chimera_instance_state", {"model": "llama", "server": "llama@gpu0+1", "gpu": "0+1", "state": "awake"}
        )
        == 1
    )


def test_unknown_state_fails_loudly() -> None:
    with pytest.raises(ValueError):
        ChimeraMetrics().set_instance_state("llama", "llama@gpu0", (0,), "sleeping")


def test_render_names_units_and_own_registry() -> None:
    m, other = ChimeraMetrics(), ChimeraMetrics()  # two instances: no duplicate-series clash
    m.requests.labels("llama", "/v1/completions", "200").inc()
    m.ttft.labels("llama").observe(0.12)
    m.e2e.labels("llama").observe(3.5)
    m.in_flight.labels("llama").inc()
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["chimera_requests"].type == "counter"
    total = [s for s in families["chimera_requests"].samples if s.name == "chimera_requests_total"]
    assert total[0].labels == {"model": "llama", "route": "/v1/completions", "status": "200"}
    assert families["chimera_request_ttft_seconds"].type == "histogram"
    assert families["chimera_request_e2e_seconds"].type == "histogram"
    assert families["chimera_requests_in_flight"].type == "gauge"
    buckets = [
        float(s.labels["le"]) for s in families["chimera_request_ttft_seconds"].samples if s.name.endswith("_bucket")
    ]
    assert min(buckets) <= 0.01 and max(b for b in buckets if b != float("inf")) >= 300
    assert (
        other.registry.get_sample_value(
            "chimera_requests_total", {"model": "llama", "route": "/v1/completions", "status": "200"}
        )
        is None
    )
    assert (
        REGISTRY.get_sample_value(
            "chimera_requests_total", {"model": "llama", "route": "/v1/completions", "status": "200"}
        )
        is None
    )


def test_restarts_are_counted_by_instance_and_reason() -> None:
    m = ChimeraMetrics()
    m.record("restarts", "m:8b", 1, "m:8b@gpu0+1 crash")
    m.record("restarts", "m:8b", 1, "m:8b@gpu0+1 crash")
    m.set_instance_state("m:8b", "m:8b@gpu0+1", (0, 1), "backoff")
    body = m.render()[0].decode()
    assert 'chimera_restarts_total{model="m:8b",reason="crash",server="m:8b@gpu0+1"} 2.0' in body
    assert 'state="backoff"} 1.0' in body


def test_the_kv_ledgers_need_and_target_are_exposed_per_server() -> None:
    m = ChimeraMetrics()
    m.set_kv("qwen", "qwen@gpu0", 224 << 20, 224 << 20, 4000)
    m.set_kv_split("qwen", "qwen@gpu0", 900 << 20, 640 << 20)
    families = {f.name: f for f in text_string_to_metric_families(m.render()[0].decode())}
    for name, value in (("chimera_kv_need_bytes", 900 << 20), ("chimera_kv_target_bytes", 640 << 20)):
        assert families[name].type == "gauge"
        assert [(s.labels, s.value) for s in families[name].samples] == [
            ({"model": "qwen", "server": "qwen@gpu0"}, value)
        ]
