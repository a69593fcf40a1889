"""docs/grafana/chimera.json and docs/observability.md speak only of series chimera exports:
every metric name in a PromQL expression is one of chimera's families (with its exposition
suffix) or an ``sglang:*`` family chimera re-exposes, and no selector filters on ``instance``
(Prometheus' own target label). ``promtool check metrics`` lints the exposition where promtool
is installed (``make promtool``: from Debian's prometheus package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.metrics import ChimeraMetrics
from orchestrator.sglang.api import METRICS_READ

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "chimera.json"
GUIDE = ROOT / "docs" / "observability.md"
LOCAL_PROMTOOL = ROOT / ".ci" / "bin" / "promtool"  # where .ci/install-promtool puts it (make test)
PROMTOOL = shutil.which("promtool") or (str(LOCAL_PROMTOOL) if LOCAL_PROMTOOL.exists() else None)
NAME = re.compile(r"\b(?:chimera_[a-z0-9_]+|sglang:[a-z0-9_:]+)")
LABELS = {"chimera_model"}  # a label of the re-exposed sglang:* series, not a metric
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exported() -> set[str]:
    """Sample names as ``GET /metrics`` writes them."""
    names = set()
    for fam in ChimeraMetrics().registry.collect():
        names.update(fam.name + s for s in SUFFIXES[fam.type])
    for name, kind in METRICS_READ.items():
        names.update(name + s for s in SUFFIXES[kind])
    return names


def families() -> set[str]:
    return {fam.name for fam in ChimeraMetrics().registry.collect()}


def expressions(node: Any) -> list[str]:
    """Every PromQL string in the dashboard: panel targets and template queries."""
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):
                out.append(v)
            else:
                out.extend(expressions(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(expressions(v))
    return out


def test_every_dashboard_expression_names_exported_metrics_only() -> None:
    exprs = expressions(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 15
    known = exported()
    for e in exprs:
        names = set(NAME.findall(e)) - LABELS
        assert names, f"no chimera or sglang metric in {e!r}"
        assert names <= known, f"{e!r} names {names - known}, which chimera does not export"
        assert not re.search(r"[{,]\s*instance\s*[=!~]", e), f"{e!r} filters on Prometheus' own instance label"


def test_the_dashboard_covers_what_operators_asked_for() -> None:
    text = DASHBOARD.read_text()
    for name in (
        "chimera_instance_state",
        "chimera_instance_gpu_bytes",
        "chimera_slo_requests_total",
        "chimera_hold_seconds_bucket",
        "chimera_gpu_seconds_total",
        "chimera_request_tpot_seconds_bucket",
    ):
        assert name in text


def test_the_guide_names_exported_metrics_only() -> None:
    text = GUIDE.read_text()
    names = set(NAME.findall(text))
    assert "chimera_gpu_seconds_total" in names
    known = exported() | families() | LABELS
    assert names <= known, names - known


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (make promtool)")
def test_promtool_accepts_the_exposition() -> None:
    m = ChimeraMetrics()
    m.requests.labels("a", "/v1/completions", "200").inc()
    m.record_slo("a", 0.1, 0.01, 0.5, 0.05)
    m.gpu_seconds.labels("a", "awake").inc(1.0)
    m.set_instance_state("a", "a@gpu0", (0,), "awake")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=m.render()[0], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (make promtool)")
def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    """Each expression as a recording rule (Grafana's variables replaced): ``promtool check
    rules`` parses its PromQL."""
    exprs = [e for e in expressions(json.loads(DASHBOARD.read_text())) if not e.startswith("label_values(")]
    rules = [
        {"record": f"chimera:check_{i}", "expr": e.replace("$__range", "1h").replace("$model", ".*")}
        for i, e in enumerate(exprs)
    ]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    r = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
