"""chimera's Prometheus metrics (its own registry; see registry.py)."""

from orchestrator.metrics.registry import LATENCY_BUCKETS_S, ChimeraMetrics

__all__ = ["LATENCY_BUCKETS_S", "ChimeraMetrics"]
