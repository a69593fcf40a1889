"""The sim's ``/metrics``: SGLang 0.5.17's metric names, types, labels and buckets
(``srt/observability/metrics_collector.py``), in a registry of its own per app.

Scheduler gauges carry SGLang's scheduler labels (model_name, engine_type, tp_rank, pp_rank,
moe_ep_rank) and are read live at scrape time (real SGLang refreshes them every few steps, so
its gauges lag; the sim's don't). Request counters and histograms carry the tokenizer labels
(model_name, engine_type, plus is_streaming where SGLang has it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# name (after "sglang:") -> help text, as in SchedulerMetricsCollector
SCHEDULER_GAUGES: dict[str, str] = {
    "num_running_reqs": "The number of running requests.",
    "num_queue_reqs": "The number of requests in the waiting queue.",
    "num_used_tokens": "The number of used tokens.",
    "token_usage": "The token usage.",
    "gen_throughput": "The generation throughput (token/s).",
    "cache_hit_rate": "The prefix cache hit rate.",
    "num_retracted_reqs": "The number of retracted requests.",
    "num_paused_reqs": "The number of paused requests by async weight sync.",
    "max_total_num_tokens": "Maximum total number of tokens in the KV cache pool.",
    "weight_memory_usage_gb": "Memory used by model weights in GB.",
    "kv_cache_memory_usage_gb": "Memory used by the KV cache pools in GB.",
    "context_len": "Maximum context length.",
    "page_size": "KV cache page size in tokens.",
}
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200, 1800, 2400)
QUEUE_BUCKETS = (
    0.0,
    0.001,
    0.005,
    0.010,
    0.050,
    0.100,
    0.200,
    0.500,
    1,
    2,
    3,
    4,
    5,
    10,
    15,
    20,
    30,
    40,
    50,
    60,
    70,
    80,
    90,
    100,
    200,
    300,
    400,
    500,
    600,
    700,
    800,
    900,
    1000,
    1200,
    1400,
    1600,
    1800,
    2000,
    2500,
    3000,
)
ITL_BUCKETS = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.010,
    0.015,
    0.020,
    0.025,
    0.030,
    0.035,
    0.040,
    0.060,
    0.080,
    0.100,
    0.200,
    0.400,
    0.600,
    0.800,
    1.000,
    2.000,
    4.000,
    6.000,
    8.000,
)


class _SchedulerGauges(Collector):
    def __init__(self, labels: dict[str, str], read: Callable[[], Mapping[str, float]]) -> None:
        self.labels, self.read = labels, read

    def describe(self) -> list[Metric]:
        return []  # names are fixed; don't read live state at registration

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        for name, doc in SCHEDULER_GAUGES.items():
            fam = GaugeMetricFamily(f"sglang:{name}", doc, labels=list(self.labels))
            fam.add_metric(list(self.labels.values()), float(values.get(name, 0.0)))
            yield fam


class _WithoutCreated(Collector):
    """SGLang runs prometheus_client in multiprocess mode, which exposes no ``_created``
    samples; drop them here (``disable_created_metrics()`` would change the whole process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for fam in self.registry.collect():
            fam.samples = [s for s in fam.samples if not s.name.endswith("_created")]
            yield fam


class SimMetrics:
    def __init__(self, served_name: str, read_gauges: Callable[[], Mapping[str, float]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.labels = {"model_name": served_name, "engine_type": "unified"}
        stream_labels = [*self.labels, "is_streaming"]
        r = self.registry
        self.prompt_tokens = Counter(
            "sglang:prompt_tokens_total", "Number of prefill tokens processed.", stream_labels, registry=r
        )
        self.generation_tokens = Counter(
            "sglang:generation_tokens_total", "Number of generation tokens processed.", stream_labels, registry=r
        )
        self.requests = Counter("sglang:num_requests_total", "Number of requests processed.", stream_labels, registry=r)
        self.aborted = Counter(
            "sglang:num_aborted_requests_total", "Number of requests aborted.", list(self.labels), registry=r
        )
        self.ttft = Histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            stream_labels,
            registry=r,
            buckets=TTFT_BUCKETS,
        )
        self.itl = Histogram(
            "sglang:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            list(self.labels),
            registry=r,
            buckets=ITL_BUCKETS,
        )
        self.e2e = Histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            stream_labels,
            registry=r,
            buckets=E2E_BUCKETS,
        )
        self.scheduler_labels = {**self.labels, "tp_rank": "0", "pp_rank": "0", "moe_ep_rank": "0"}
        self.queue = Histogram(
            "sglang:queue_time_seconds",
            "Histogram of queueing time in seconds.",
            list(self.scheduler_labels),
            registry=r,
            buckets=QUEUE_BUCKETS,
        )
        r.register(_SchedulerGauges(self.scheduler_labels, read_gauges))
        self._exposed = _WithoutCreated(r)

    def _stream(self, stream: bool) -> dict[str, str]:
        return {**self.labels, "is_streaming": "true" if stream else "false"}

    def queue_time(self, seconds: float) -> None:
        """A request waited ``seconds`` in the scheduler's queue before its prefill."""
        self.queue.labels(**self.scheduler_labels).observe(seconds)

    def first_token(self, ttft: float, stream: bool) -> None:
        self.ttft.labels(**self._stream(stream)).observe(ttft)

    def tokens(self, interval: float, n: int) -> None:
        """``n`` tokens arrived ``interval`` seconds after the previous output."""
        if n > 0:
            h = self.itl.labels(**self.labels)
            for _ in range(n):
                h.observe(interval / n)

    def finished(self, prompt_tokens: int, generated: int, e2e: float, stream: bool, aborted: bool) -> None:
        labels = self._stream(stream)
        self.prompt_tokens.labels(**labels).inc(prompt_tokens)
        self.generation_tokens.labels(**labels).inc(generated)
        self.requests.labels(**labels).inc()
        self.e2e.labels(**labels).observe(e2e)
        if aborted:
            self.aborted.labels(**self.labels).inc()

    def render(self) -> bytes:
        return generate_latest(self._exposed)
