"""The files of a benchmark run and the schema of report.json.

DIR/report.json      {"schema": SCHEMA, "created", "engine", "machine", "config", "runs": [run]}
                     run = {"label", "offered_rate_rps", "trace": {...}, "duration_s",
                            "overall": summary, "per_model": {model: summary}, "client": {...}}
                     summary: see summary.py (all times in seconds, attainment in [0, 1])
DIR/requests.jsonl   one RequestRecord per line (``run`` = index into runs)
DIR/states.jsonl     /metrics snapshots: {"run", "t_s", "states": {instance: {model, state}},
                     "gauges": {...}}
DIR/*.png            plots (plots.py)
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.client.record import RequestRecord

SCHEMA = "chimera-bench-report/1"
_SUMMARY_KEYS = {"requests", "completed", "failed", "errors", "throughput", "latency_s", "attainment", "goodput"}


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or None,
    }


def new_report(engine: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "engine": engine,
        "machine": machine(),
        "config": config,
        "runs": [],
    }


def write_json(path: Path, obj: Any) -> None:
    path.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "wb") as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")


def write_records(path: Path, records: Sequence[RequestRecord]) -> None:
    write_jsonl(path, [r.to_json() for r in records])


def read_records(path: Path) -> list[RequestRecord]:
    return [RequestRecord.from_json(orjson.loads(line)) for line in path.read_bytes().splitlines() if line.strip()]


def validate(report: dict[str, Any]) -> list[str]:
    """Problems with a report's shape and invariants (empty = valid)."""
    problems = []
    if report.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}, got {report.get('schema')!r}")
    for key in ("engine", "machine", "config", "runs"):
        if key not in report:
            problems.append(f"missing {key}")
    if "simulated" not in report.get("engine", {}):
        problems.append("engine.simulated missing: every number must say whether it is simulated")
    for i, run in enumerate(report.get("runs", [])):
        for name, s in [
            ("overall", run.get("overall", {})),
            *((f"per_model.{m}", v) for m, v in run.get("per_model", {}).items()),
        ]:
            problems += [f"runs[{i}].{name}: {p}" for p in _check_summary(s)]
        per_model = run.get("per_model", {})
        if sum(v.get("requests", 0) for v in per_model.values()) != run.get("overall", {}).get("requests"):
            problems.append(f"runs[{i}]: per-model requests do not add up to the overall count")
    return problems


def _check_summary(s: dict[str, Any]) -> list[str]:
    problems = [f"missing {k}" for k in sorted(_SUMMARY_KEYS - set(s))]
    if problems:
        return problems
    if s["completed"] + s["failed"] != s["requests"]:
        problems.append("completed + failed != requests")
    for k, v in s["attainment"].items():
        if v is not None and not 0.0 <= v <= 1.0:
            problems.append(f"attainment.{k} = {v} is outside [0, 1]")
    for name, d in s["latency_s"].items():
        if d["count"]:
            seq = [d["p50"], d["p95"], d["p99"], d["max"]]
            if any(a > b + 1e-12 for a, b in zip(seq, seq[1:], strict=False)) or seq[0] < 0:
                problems.append(f"latency_s.{name}: percentiles not ordered: {seq}")
    return problems
