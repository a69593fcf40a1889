"""Benchmark workloads: seeded synthetic traces (Prism's generator) and replays of the public
traces in ``bench/traces/data``. Everything returns ``list[BenchRequest]``, sorted by arrival."""

from bench.traces.build import TRACES, TraceOptions, build_trace, describe, map_models
from bench.traces.files import TraceFileError, default_traces_dir
from bench.traces.request import BenchRequest
from bench.traces.synthetic import SyntheticSpec, popularity

__all__ = [
    "TRACES",
    "BenchRequest",
    "SyntheticSpec",
    "TraceFileError",
    "TraceOptions",
    "build_trace",
    "default_traces_dir",
    "describe",
    "map_models",
    "popularity",
]
