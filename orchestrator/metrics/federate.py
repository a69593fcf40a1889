"""Re-exposes every awake engine's own ``sglang:*`` series on chimera's ``/metrics``, each
sample labelled with the chimera ``server`` (instance id) and ``chimera_model`` it came from,
so one scrape of chimera sees the whole host. SGLang's own labels (``model_name``...) are kept,
so SGLang's Grafana dashboard reads these series as they are; its ``instance`` is Prometheus'
target label (chimera), never overwritten here. Engines are scraped concurrently at request time with a
short timeout; an engine that does not answer is skipped and counted, never fails the scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from orchestrator.metrics.registry import SERVER
from orchestrator.sglang.api import METRICS
from orchestrator.types import InstanceView

SCRAPE_TIMEOUT_S = 2.0  # SGLang answers /metrics in milliseconds; a busy one may take longer


class _Static(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


async def engine_metrics(client: httpx.AsyncClient, views: Iterable[InstanceView]) -> bytes:
    """Exposition text of the ``sglang:*`` families of every instance with an address."""
    targets = [v for v in views if v.base_url and v.state.value == "awake"]
    texts = await asyncio.gather(*(_scrape(client, v) for v in targets))
    merged: dict[str, Metric] = {}
    for view, text in zip(targets, texts, strict=True):
        if text is None:
            continue
        for fam in text_string_to_metric_families(text):
            if not fam.name.startswith("sglang:"):
                continue
            out = merged.get(fam.name)
            if out is None:
                out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                labels = {**s.labels, SERVER: view.id, "chimera_model": view.model}
                out.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
    if not merged:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(list(merged.values())))
    return generate_latest(registry)


async def _scrape(client: httpx.AsyncClient, view: InstanceView) -> str | None:
    assert view.base_url is not None
    try:
        r = await client.get(view.base_url + METRICS.path, timeout=SCRAPE_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    return r.text if r.status_code == 200 else None
