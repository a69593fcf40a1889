"""The printed table of a report (rich): one row per model and one for all, times in ms."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    return "-" if v is None else f"{v * 1000:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def run_table(run: dict[str, Any], engine: dict[str, Any]) -> Table:
    sim = " — SIMULATED (sim engine, H100 model on CPU)" if engine.get("simulated") else ""
    title = (
        f"{run.get('label', 'run')}: {run['trace']['requests']} requests, "
        f"{run['offered_rate_rps']:.2f} req/s offered, {run['duration_s']:.1f} s{sim}"
    )
    t = Table(title=title, title_style="bold yellow" if sim else "bold")
    for col in (
        "model",
        "ok/sent",
        "req/s",
        "out tok/s",
        "TTFT p50/p99 ms",
        "TPOT p50/p99 ms",
        "ITL p99 ms",
        "E2E p50/p99 ms",
        "SLO TTFT",
        "SLO TPOT",
        "SLO both",
        "goodput req/s",
    ):
        t.add_column(col, justify="left" if col == "model" else "right")
    rows = [*sorted(run["per_model"].items()), ("ALL", run["overall"])]
    for name, s in rows:
        lat, att = s["latency_s"], s["attainment"]
        t.add_row(
            name,
            f"{s['completed']}/{s['requests']}",
            f"{s['throughput']['requests_per_s']:.2f}",
            f"{s['throughput']['output_tokens_per_s']:.0f}",
            f"{_ms(lat['ttft'], 'p50')}/{_ms(lat['ttft'], 'p99')}",
            f"{_ms(lat['tpot'], 'p50')}/{_ms(lat['tpot'], 'p99')}",
            _ms(lat["itl"], "p99"),
            f"{_ms(lat['e2e'], 'p50')}/{_ms(lat['e2e'], 'p99')}",
            _pct(att["ttft"]),
            _pct(att["tpot"]),
            _pct(att["joint"]),
            f"{s['goodput']['requests_per_s']:.2f}",
            style="bold" if name == "ALL" else None,
        )
    return t


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for run in report["runs"]:
        console.print(run_table(run, report["engine"]))
        errors = run["overall"]["errors"]
        if errors:
            console.print(f"[red]failures:[/] {errors}")
        lag = run["client"]["send_lag_s"]
        if lag["count"] and lag["p99"] is not None and lag["p99"] > 0.05:
            console.print(
                f"[yellow]client lag p99 {lag['p99'] * 1000:.0f} ms: the load "
                "generator was late; latencies include its own queueing[/]"
            )
    if report["engine"].get("simulated"):
        console.print(
            "[bold yellow]All numbers are SIMULATED[/] (sim engine: a latency model of an H100 running on this CPU)."
        )
