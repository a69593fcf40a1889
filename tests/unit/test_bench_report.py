"""bench.report: percentiles, SLO attainment with failures as misses, goodput, the report
schema and its invariants, the printed table, the plots, and the deployment-mode ratios."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from bench.client import RequestRecord
from bench.client.server import engine_info, parse_metrics
from bench.live.modes import ratios, with_mode
from bench.report import (
    new_report,
    percentile,
    print_report,
    read_records,
    summarize,
    summarize_run,
    validate,
    write_records,
)
from orchestrator.config import load_config


def rec(
    i: int,
    model: str = "a",
    ok: bool = True,
    ttft: float = 0.1,
    tpot: float = 0.01,
    out: int = 10,
    slo: tuple[float | None, float | None] = (0.2, 0.02),
) -> RequestRecord:
    return RequestRecord(
        id=i,
        model=model,
        route="/v1/completions",
        arrival_s=float(i),
        sent_at_s=float(i),
        status=200 if ok else 503,
        ok=ok,
        error="" if ok else "HTTP 503: busy",
        prompt_tokens=5,
        prompt_tokens_requested=5,
        output_tokens=out if ok else 0,
        output_tokens_requested=out,
        ttft_s=ttft if ok else None,
        e2e_s=ttft + tpot * (out - 1) if ok else None,
        tpot_s=tpot if ok else None,
        itl_s=[tpot] * (out - 1) if ok else [],
        slo_ttft_s=slo[0],
        slo_tpot_s=slo[1],
    )


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_attainment_counts_failures_as_misses() -> None:
    records = [
        rec(0),  # meets both
        rec(1, ttft=0.5),  # misses TTFT
        rec(2, tpot=0.05),  # misses TPOT
        rec(3, ok=False),  # failed: misses all three
        rec(4, slo=(None, None), ttft=9.0),  # no objective: met because it succeeded
        rec(5, out=1, tpot=0.0),  # one output token: no TPOT, meets it
    ]
    s = summarize(records, duration_s=2.0)
    assert s["requests"] == 6 and s["completed"] == 5 and s["failed"] == 1
    assert s["attainment"] == {
        "ttft": pytest.approx(4 / 6),
        "tpot": pytest.approx(4 / 6),
        "joint": pytest.approx(3 / 6),
    }
    assert s["goodput"]["requests_per_s"] == pytest.approx(3 / 2.0)
    assert s["goodput"]["output_tokens_per_s"] == pytest.approx((10 + 10 + 1) / 2.0)
    assert s["throughput"]["requests_per_s"] == pytest.approx(5 / 2.0)
    assert s["errors"] == {"HTTP 503": 1}
    assert s["latency_s"]["ttft"]["count"] == 5  # failures have no latency


def test_latency_distributions_are_in_seconds_and_ordered() -> None:
    s = summarize([rec(i, ttft=0.01 * (i + 1)) for i in range(100)], 10.0)
    ttft = s["latency_s"]["ttft"]
    assert ttft["p50"] == pytest.approx(0.505) and ttft["max"] == pytest.approx(1.0)
    assert ttft["p50"] <= ttft["p95"] <= ttft["p99"] <= ttft["max"]
    assert s["latency_s"]["itl"]["count"] == 100 * 9


def _report(records: list[RequestRecord]) -> dict[str, Any]:
    report = new_report(engine_info("simulated", "test"), {"trace": "synthetic"})
    report["runs"].append(
        {"label": "rate 1", "offered_rate_rps": 1.0, "trace": {"requests": len(records)}, **summarize_run(records, 5.0)}
    )
    return report


def test_report_schema_and_invariants() -> None:
    report = _report([rec(0), rec(1, model="b", ok=False), rec(2, model="b")])
    assert validate(report) == []
    assert report["engine"]["simulated"] is True and "SIMULATED" in report["engine"]["note"]
    run = report["runs"][0]
    assert set(run["per_model"]) == {"a", "b"} and run["client"]["send_lag_s"]["count"] == 3
    json.dumps(report)  # serializable as is
    bad = json.loads(json.dumps(report))
    bad["runs"][0]["overall"]["attainment"]["joint"] = 1.5
    bad["runs"][0]["per_model"]["a"]["latency_s"]["ttft"]["p99"] = -1.0
    bad["runs"][0]["per_model"]["b"]["requests"] = 7
    del bad["engine"]["simulated"]
    problems = " | ".join(validate(bad))
    for needle in ("outside [0, 1]", "not ordered", "do not add up", "simulated"):
        assert needle in problems


def test_records_round_trip_and_table_prints(tmp_path: Path) -> None:
    records = [rec(0), rec(1, ok=False)]
    write_records(tmp_path / "r.jsonl", records)
    assert read_records(tmp_path / "r.jsonl") == records
    out = io.StringIO()
    print_report(_report(records), Console(file=out, width=200))
    text = out.getvalue()
    assert "SIMULATED" in text and "ALL" in text and "HTTP 503" in text


def test_plots_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.report import plots

    records = [rec(i, model="ab"[i % 2], ok=i % 5 != 0) for i in range(20)]
    report = _report(records)
    snaps = [
        {
            "t_s": 0.0,
            "states": {"a@gpu0": {"model": "a", "state": "parked"}},
            "gauges": {"chimera_kv_limit_bytes{server=a@gpu0}": 2.0**30},
        },
        {"t_s": 1.0, "states": {"a@gpu0": {"model": "a", "state": "awake"}}, "gauges": {}},
    ]
    for path in (
        plots.attainment_vs_rate(report, tmp_path / "a.png"),
        plots.timelines(records, report["engine"], tmp_path / "t.png"),
        plots.states_timeline(snaps, report["engine"], tmp_path / "s.png"),
    ):
        assert path is not None and path.stat().st_size > 1000


def test_metrics_snapshot_keeps_current_states_and_gauges() -> None:
    text = """# TYPE chimera_instance_state gauge
chimera_instance_state{model="a",server="a@gpu0",gpu="0",state="awake"} 1.0
chimera_instance_state{model="a",server="a@gpu0",gpu="0",state="parked"} 0.0
# TYPE chimera_kv_limit_bytes gauge
chimera_kv_limit_bytes{server="a@gpu0"} 1024.0
# TYPE chimera_requests counter
chimera_requests_total{model="a",route="/v1/completions",status="200"} 3.0
"""
    snap = parse_metrics(text)
    assert snap["states"] == {"a@gpu0": {"model": "a", "state": "awake"}}
    assert snap["gauges"] == {"chimera_kv_limit_bytes{server=a@gpu0}": 1024.0}


def test_modes_rewrite_the_placements_and_compute_ratios(tmp_path: Path) -> None:
    src = tmp_path / "p.yaml"
    src.write_text(
        "mode: full\nmodels:\n  - name: x\n    model_path: tiny-llama\n    placements: [{gpus: [0], on: false}]\n"
    )
    cfg = load_config(with_mode(src, "static", tmp_path / "s"))  # chimera reads it back
    assert cfg.mode == "static" and cfg.models[0].placements[0].on is False
    prism = tmp_path / "p.json"
    prism.write_text(
        json.dumps([{"model_name": "m", "model_path": "tiny-llama", "init_placements": [{"gpu_ids": [0], "on": True}]}])
    )
    out = yaml.safe_load(with_mode(prism, "elastic", tmp_path / "e").read_text())
    assert out["mode"] == "elastic" and out["models"][0]["placements"][0]["gpus"] == [0]

    def mode_result(joint: float) -> dict[str, Any]:
        s = summarize([rec(0)], 1.0)
        s["attainment"]["joint"] = joint
        return {"ok": True, "runs": [{"overall": s}]}

    r = ratios({"static": mode_result(0.5), "elastic": mode_result(0.75), "full": {"ok": False, "error": "boom"}})
    assert r["elastic/static"]["joint attainment"] == [pytest.approx(1.5)]
    assert "full/static" not in r
