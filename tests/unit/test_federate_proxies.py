"""The secondary proxies' request series in chimera's one exposition (metrics/federate.py
``with_proxies``): each family one group, the workers' samples labelled ``proxy``, read back by
Prometheus' own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.dashboard import readings
from orchestrator.metrics.federate import with_proxies
from orchestrator.metrics.registry import ChimeraMetrics


def served(m: ChimeraMetrics, model: str, n: int) -> None:
    for _ in range(n):
        m.requests.labels(model, "/v1/completions", "200").inc()
        m.ttft.labels(model).observe(0.2)


def totals(text: bytes) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text.decode()):
        if fam.name == "chimera_requests":
            for s in fam.samples:
                if s.name == "chimera_requests_total":
                    out[(s.labels["model"], s.labels.get("proxy", "0"))] = s.value
    return out


def test_the_workers_request_samples_join_the_primarys_families() -> None:
    primary, one, two = ChimeraMetrics(), ChimeraMetrics(), ChimeraMetrics()
    served(primary, "a", 2)
    served(one, "a", 3)
    served(two, "b", 5)
    two.instance_state.labels("b", "b@gpu0", "0", "awake").set(1)  # not a request family: left out
    body = with_proxies(primary.render()[0], [("1", one.render()[0].decode()), ("2", two.render()[0].decode())])
    assert totals(body) == {("a", "0"): 2, ("a", "1"): 3, ("b", "2"): 5}
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}  # one group each: it parses
    counts = {
        s.labels.get("proxy", "0"): s.value
        for s in fams["chimera_request_ttft_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {"0": 2, "1": 3, "2": 5}
    assert 'proxy="2"' not in "".join(str(s) for s in fams["chimera_instance_state"].samples)
    text = body.decode()
    assert text.count("# TYPE chimera_requests_total counter") == 1
    assert with_proxies(primary.render()[0], []) == primary.render()[0]


def test_the_dashboard_adds_the_workers_readings_as_one_process_would_count_them() -> None:
    primary, one, two, alone = ChimeraMetrics(), ChimeraMetrics(), ChimeraMetrics(), ChimeraMetrics()
    for m, model, n, ttft in ((primary, "a", 2, 0.1), (one, "a", 3, 2.0), (two, "b", 5, 0.4)):
        for into in (m, alone):
            for _ in range(n):
                into.requests.labels(model, "/v1/chat/completions", "200").inc()
                into.ttft.labels(model).observe(ttft)
                into.tpot.labels(model).observe(0.02)
                into.slo.labels(model, "joint", "met" if ttft < 1 else "missed").inc()
    one.requests.labels("a", "/v1/chat/completions", "429").inc()
    alone.requests.labels("a", "/v1/chat/completions", "429").inc()
    merged = readings.with_proxies(readings.read(primary), [readings.read(one), readings.read(two)])
    assert merged == readings.read(alone)
    assert merged.shed == {"a": 1.0} and readings.quantile(0.99, merged.ttft["a"]) > 1.0  # the worker's slow ones
    assert readings.with_proxies(readings.read(primary), []) == readings.read(primary)
