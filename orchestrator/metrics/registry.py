"""chimera's own Prometheus metrics, in a registry owned by one ``ChimeraMetrics`` object.

Never the process-global registry: tests and several apps in one process must not share series.
Who writes what: the proxy counts requests and observes latencies; the control loop sets
instance states. Base units (seconds), ``chimera_`` prefix.
"""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from orchestrator.types import InstanceState, gpu_label

# The label naming one engine instance (its id, e.g. ``llama@gpu0``). Not ``instance``: that is
# Prometheus' own target label, and a scraped ``instance`` is stored as ``exported_instance``,
# so a query on ``instance=`` would match nothing.
SERVER = "server"

# LLM latencies span milliseconds (a short TTFT on an awake model) to minutes (a request held
# through a cold start, ~65 s measured on the H100, or a long generation), so the buckets do too.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

# Decode steps take milliseconds (a few on a small model alone, tens to hundreds in big batches).
TPOT_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
)


class ChimeraMetrics:
    """Every chimera metric, registered in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chimera_requests",
            "Proxied requests by model, route and HTTP status (499: the client left before the response ended)",
            ["model", "route", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "chimera_request_ttft_seconds",
            "Time from the proxy receiving a streamed request "
            "to its first non-empty chunk (includes time held while the model wakes)",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.e2e = Histogram(
            "chimera_request_e2e_seconds",
            "Time from the proxy receiving a request to the end of its successful response",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tpot = Histogram(
            "chimera_request_tpot_seconds",
            "Time per output token after the first, of a streamed request read to its end: "
            "(end - first chunk) / (output tokens - 1), tokens from the stream's usage, else one per frame",
            ["model"],
            buckets=TPOT_BUCKETS_S,
            registry=r,
        )
        self.slo = Counter(
            "chimera_slo_requests",
            "Streamed requests read to their end, by SLO (ttft, tpot, joint: both) and outcome "
            "(met, missed) against the model's slo.ttft_s / slo.tpot_s (or their defaults); "
            "attainment = met / (met + missed). A single-token answer has no TPOT: joint is its TTFT",
            ["model", "slo", "outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "chimera_requests_in_flight",
            "Requests between model resolution and the end of the response, including those held while the model wakes",
            ["model"],
            registry=r,
        )
        self.instance_state = Gauge(
            "chimera_instance_state",
            "1 for the current lifecycle state of an engine instance, 0 for the others",
            ["model", SERVER, "gpu", "state"],
            registry=r,
        )
        self.server_holds = Gauge(
            "chimera_server_holds",
            "1 for the weights (model_path) a shape pool's server holds now, 0 for those it held before",
            [SERVER, "pool", "model_path"],
            registry=r,
        )
        self.retargets = Counter(
            "chimera_retargets",
            "Shape-pool servers re-targeted to another model's weights, by pool and outcome",
            ["pool", "outcome"],
            registry=r,
        )
        self.pool_staged_bytes = Gauge(
            "chimera_pool_staged_bytes",
            "Bytes of a shape pool's checkpoints read into host RAM (page cache) ahead of re-targets",
            ["pool"],
            registry=r,
        )

        self.wake_seconds = Histogram(
            "chimera_wake_seconds",
            "Wake of a parked instance: resume, continue and the output-checking probe",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.wake_room_wait = Histogram(
            "chimera_wake_room_wait_seconds",
            "Waits of a due wake for its weights to fit beside what its GPUs' neighbours hold "
            "(their KV pages), by outcome: fit (then woken) or timeout (its plan abandoned)",
            ["model", "outcome"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.park_seconds = Histogram(
            "chimera_park_seconds",
            "Park of an instance: pause, drain, release and the memory check",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.parks = Counter(
            "chimera_parks",
            "Parks started, by reason (warm_start, idle, make_room, admin)",
            ["model", "reason"],
            registry=r,
        )
        self.park_failures = Counter(
            "chimera_park_failures",
            "Parks whose memory did not drop (the instance was resumed)",
            ["model"],
            registry=r,
        )
        self.freed_bytes = Counter(
            "chimera_park_freed_bytes",
            "GPU memory verified freed by parks (NVML or the sim ledger)",
            ["model"],
            registry=r,
        )
        self.restarts = Counter(
            "chimera_restarts",
            "Restarts of an engine instance after a failure, by reason (crash, hung, start_failed, "
            'wake_failed); chimera_instance_state{state="backoff"} is 1 while one waits for its restart',
            ["model", SERVER, "reason"],
            registry=r,
        )
        self.held = Gauge(
            "chimera_requests_held",
            "Requests held while their model starts or wakes",
            ["model"],
            registry=r,
        )
        self.hold_seconds = Histogram(
            "chimera_hold_seconds",
            "Time a request was held before an instance took it",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

        self.kv_limit = Gauge(
            "chimera_kv_limit_bytes",
            "KV limit in force in an instance's cumem_shim (elastic modes), as its shim last reported it",
            ["model", SERVER],
            registry=r,
        )
        self.kv_mapped = Gauge(
            "chimera_kv_mapped_bytes",
            "GPU memory mapped for an instance's KV cache by its cumem_shim",
            ["model", SERVER],
            registry=r,
        )
        self.kv_need = Gauge(
            "chimera_kv_need_bytes",
            "KV the KV ledger counts an instance to need at its last split: its requests' tokens, "
            "queued and held prompts, and its growth over the next seconds (elastic modes)",
            ["model", SERVER],
            registry=r,
        )
        self.kv_target = Gauge(
            "chimera_kv_target_bytes",
            "KV the KV ledger's last split gave an instance before phasing: above "
            "chimera_kv_limit_bytes while its grow waits for neighbours' pages to free (elastic modes)",
            ["model", SERVER],
            registry=r,
        )
        self.kv_used_tokens = Gauge(
            "chimera_kv_used_tokens",
            "KV token slots in use in an instance (requests and prefix cache), from its cumem_shim",
            ["model", SERVER],
            registry=r,
        )

        self.instance_gpu_bytes = Gauge(
            "chimera_instance_gpu_bytes",
            "An instance's GPU memory once up, summed over its "
            "GPUs: its budget (kind=budget, from the deployment) and what it holds "
            "(kind=measured: NVML per process, or the sim engine's ledger)",
            ["model", SERVER, "kind"],
            registry=r,
        )

        self._instance_gpu: dict[str, str] = {}  # instance -> its gpu label now
        self.node_up = Gauge(
            "chimera_node_up",
            "1 while the node agent of a Ray cluster's node answers, 0 once it is gone (up --ray; its "
            "instances start again on other nodes)",
            ["node"],
            registry=r,
        )
        self.host_memory = Gauge(
            "chimera_host_memory_bytes",
            "Pinned host RAM an instance's weight backup holds (mode full, from the weights' size): "
            "kind=parked_weights while parking, parked or waking; kind=retained_weights while awake "
            "after an earlier park (the backup is kept between parks); 0 before its first park",
            ["model", SERVER, "kind"],
            registry=r,
        )

        self.gpu_seconds = Counter(
            "chimera_gpu_seconds",
            "GPU-seconds by model and instance state, split by memory share: an instance holding "
            "X% of a GPU's memory accrues X% of a GPU-second per second on each of its GPUs",
            ["model", "state"],
            registry=r,
        )

    def record_slo(self, model: str, ttft_s: float, tpot_s: float | None, ttft_slo_s: float, tpot_slo_s: float) -> None:
        """One streamed request read to its end: its TPOT and its SLO outcomes (met: at most
        the objective)."""
        ttft_met = ttft_s <= ttft_slo_s
        self.slo.labels(model, "ttft", _outcome(ttft_met)).inc()
        joint = ttft_met
        if tpot_s is not None:
            self.tpot.labels(model).observe(tpot_s)
            tpot_met = tpot_s <= tpot_slo_s
            self.slo.labels(model, "tpot", _outcome(tpot_met)).inc()
            joint = joint and tpot_met
        self.slo.labels(model, "joint", _outcome(joint)).inc()

    def set_kv(self, model: str, instance: str, limit_bytes: int, mapped_bytes: int, used_tokens: int) -> None:
        """One instance's shim status, as the KV ledger last read it."""
        self.kv_limit.labels(model, instance).set(limit_bytes)
        self.kv_mapped.labels(model, instance).set(mapped_bytes)
        self.kv_used_tokens.labels(model, instance).set(used_tokens)

    def set_kv_split(self, model: str, instance: str, need_bytes: int, target_bytes: int) -> None:
        """One instance's need and target in the KV ledger's last split."""
        self.kv_need.labels(model, instance).set(need_bytes)
        self.kv_target.labels(model, instance).set(target_bytes)

    def record(self, kind: str, model: str, value: float, label: str = "") -> None:
        """One measurement from the control loop (Effects.observe). Unknown kinds raise."""
        if kind == "wake_seconds":
            self.wake_seconds.labels(model).observe(value)
        elif kind == "park_seconds":
            self.park_seconds.labels(model).observe(value)
        elif kind == "wake_room_wait_seconds":  # label: the outcome, fit or timeout
            self.wake_room_wait.labels(model, label).observe(value)
        elif kind == "parks":
            self.parks.labels(model, label).inc(value)
        elif kind == "park_failures":
            self.park_failures.labels(model).inc(value)
        elif kind == "freed_bytes":
            self.freed_bytes.labels(model).inc(max(0.0, value))
        elif kind == "restarts":  # label: "<instance> <reason>"
            instance, _, reason = label.rpartition(" ")
            self.restarts.labels(model, instance, reason).inc(value)
        elif kind == "held":
            self.held.labels(model).set(value)
        elif kind == "hold_seconds":
            self.hold_seconds.labels(model).observe(value)
        elif kind in ("instance_gpu_bytes_budget", "instance_gpu_bytes_measured"):  # label: instance
            self.instance_gpu_bytes.labels(model, label, kind.rsplit("_", 1)[1]).set(value)
        else:
            raise ValueError(f"unknown measurement kind {kind!r}")

    def set_node_up(self, node: str, up: bool) -> None:
        self.node_up.labels(node).set(1.0 if up else 0.0)

    def set_instance_state(self, model: str, instance: str, gpus: tuple[int, ...], state: str) -> None:
        """Mark ``state`` (an InstanceState value) as current and zero the instance's others.
        Raises ValueError for a state that is not an InstanceState value."""
        current = InstanceState(state)
        gpu = gpu_label(gpus)
        old = self._instance_gpu.get(instance)
        if old is not None and old != gpu:  # moved to other GPUs (up --ray): drop the old series
            for s in InstanceState:
                with contextlib.suppress(KeyError):
                    self.instance_state.remove(model, instance, old, s.value)
        self._instance_gpu[instance] = gpu
        for s in InstanceState:
            self.instance_state.labels(model, instance, gpu, s.value).set(1.0 if s is current else 0.0)

    def set_server_holds(self, server: str, pool: str, model_path: str | None) -> None:
        """``model_path`` is what the pooled ``server`` holds now (None: unknown, mid-switch)."""
        for labels in list(self.server_holds._metrics):
            if labels[0] == server:
                self.server_holds.labels(*labels).set(0.0)
        if model_path is not None:
            self.server_holds.labels(server, pool, model_path).set(1.0)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its Content-Type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _outcome(met: bool) -> str:
    return "met" if met else "missed"
