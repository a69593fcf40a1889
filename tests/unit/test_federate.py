"""chimera's /metrics re-exposes the engines' sglang:* families line by line: checked against
prometheus_client's own parser (the same families, samples, values and labels, each sample
with its server and chimera_model)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics.federate import merge
from orchestrator.types import InstanceState, InstanceView
from simsglang.metrics import SimMetrics


def engine_text(name: str, requests: int) -> str:
    sm = SimMetrics(name, lambda: {"sglang:num_running_reqs": 3.0})
    for _ in range(requests):
        sm.finished(100, 50, 1.0, True, False)
        sm.tokens(0.01, 3)
    reg = CollectorRegistry()
    odd = Gauge("sglang:odd", "label values with space, brace and quote", ["note"], registry=reg)
    odd.labels('a b} "c"').set(1.5)
    Gauge("other_family", "not sglang's", registry=reg).set(7)
    return sm.render().decode() + generate_latest(reg).decode()


def view(i: int, model: str) -> InstanceView:
    return InstanceView(f"{model}@gpu{i}", model, (i,), InstanceState.AWAKE, f"http://e{i}")


def samples(text: str) -> dict[str, set[tuple[str, tuple[tuple[str, str], ...], float]]]:
    out: dict[str, set[tuple[str, tuple[tuple[str, str], ...], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(f"{fam.name} {fam.type}", set()).update(
            (s.name, tuple(sorted(s.labels.items())), s.value) for s in fam.samples
        )
    return out


def test_every_sglang_sample_of_every_engine_comes_with_its_server_and_model() -> None:
    texts = [(view(0, "a"), engine_text("a", 3)), (view(1, 'b"x'), engine_text('b"x', 5))]
    merged = merge(texts).decode()
    want: dict[str, set[tuple[str, tuple[tuple[str, str], ...], float]]] = {}
    for v, text in texts:
        for fam, got in samples(text).items():
            if fam.startswith("sglang:"):
                extra = {"server": v.id, "chimera_model": v.model}
                want.setdefault(fam, set()).update(
                    (n, tuple(sorted({**dict(labels), **extra}.items())), value) for n, labels, value in got
                )
    assert samples(merged) == want
    assert merged.count("# TYPE sglang:num_running_reqs ") == 1 and "other_family" not in merged
    assert merge([]) == b""
