"""One benchmark against a running chimera (or any server with its API): build the trace of
each run, replay it open-loop while polling /metrics, then write report.json, requests.jsonl,
states.jsonl and the plots into the output folder and print the table."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.client import ClientConfig, ClientShards, RequestRecord, make_client, run_open_loop
from bench.client.server import MetricsPoller, engine_info, probe_engine, served_models
from bench.report import new_report, print_report, summarize_run, validate, write_json
from bench.report.document import write_jsonl, write_records
from bench.traces import TraceOptions, build_trace, describe

PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class SessionSpec:
    base_url: str
    trace: str
    points: Sequence[tuple[str, TraceOptions]]
    models: Sequence[str]  # placements order; empty = the proxy's order
    slos: dict[str, tuple[float | None, float | None]]
    default_slo: tuple[float | None, float | None]
    route: str
    token_ids: bool
    request_timeout_s: float
    engine_label: str | None  # given by the user or by the engine the runner started
    engine_how: str
    metrics_interval_s: float
    plots: bool
    config: dict[str, Any]  # recorded as is in report.json


def run_session(spec: SessionSpec, out: Path, console: Console) -> dict[str, Any]:
    """Run the benchmark, then write its files into ``out``; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    report, all_records, snapshots = asyncio.run(_collect(spec, console))
    problems = validate(report)
    if problems:
        raise AssertionError("the report is inconsistent (a bug in bench/): " + "; ".join(problems))
    write_json(out / "report.json", report)
    write_records(out / "requests.jsonl", all_records)
    write_jsonl(out / "states.jsonl", snapshots)
    if spec.plots:
        _plots(report, all_records, snapshots, out, console)
    print_report(report, console)
    console.print(f"wrote {out / 'report.json'}, requests.jsonl, states.jsonl" + (" and plots" if spec.plots else ""))
    return report


async def _collect(
    spec: SessionSpec, console: Console
) -> tuple[dict[str, Any], list[RequestRecord], list[dict[str, Any]]]:
    async with make_client() as client, ClientShards() as shards:
        served = await served_models(client, spec.base_url)
        names = [m.name for m in served]
        models = [m for m in spec.models if m in names] or names
        if spec.engine_label is not None:
            engine = engine_info(spec.engine_label, spec.engine_how)
        else:
            label = await probe_engine(client, spec.base_url, served)
            engine = engine_info(
                label, "probe: batched /generate (the sim refuses it with a SIMULATED message; stock SGLang serves it)"
            )
        slos = {m: spec.slos.get(m, spec.default_slo) for m in models}
        report = new_report(engine, {**spec.config, "models": models, "slos": slos})
        all_records: list[RequestRecord] = []
        snapshots: list[dict[str, Any]] = []
        for i, (label, opts) in enumerate(spec.points):
            reqs = build_trace(spec.trace, opts, models, slos)
            if not reqs:
                raise SystemExit(
                    f"error: the {spec.trace} trace has no requests for {label} "
                    "(check --duration, --trace-start, --sample)"
                )
            console.print(
                f"[bold]{label}[/]: {len(reqs)} requests over "
                f"{opts.synthetic.duration_s:g} s to {spec.base_url} "
                f"({engine['label']})"
            )
            cfg = ClientConfig(
                spec.base_url, spec.route, opts.synthetic.seed, spec.token_ids, spec.request_timeout_s, run=i
            )
            records, duration, snaps = await _one_run(client, shards, cfg, reqs, spec, console)
            run = {
                "label": label,
                "offered_rate_rps": len(reqs) / opts.synthetic.duration_s,
                "trace": describe(reqs, opts.synthetic.duration_s),
                **summarize_run(records, duration),
                "metrics_snapshots": len(snaps),
            }
            report["runs"].append(run)
            all_records += records
            snapshots += [{"run": i, **s} for s in snaps]
    return report, all_records, snapshots


async def _one_run(
    client: Any, shards: ClientShards, cfg: ClientConfig, reqs: list[Any], spec: SessionSpec, console: Console
) -> tuple[list[RequestRecord], float, list[dict[str, Any]]]:
    done: list[RequestRecord] = []
    t0 = time.perf_counter()
    poller = MetricsPoller(client, spec.base_url, t0, spec.metrics_interval_s)

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            failed = sum(not r.ok for r in done)
            console.print(
                f"  t={time.perf_counter() - t0:5.0f} s  done {len(done)}/{len(reqs)}  failed {failed}", highlight=False
            )

    tasks = [asyncio.create_task(poller.run()), asyncio.create_task(progress())]
    try:
        records = await run_open_loop(reqs, cfg, shards, on_record=done.append)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    return records, time.perf_counter() - t0, poller.snapshots


def _plots(
    report: dict[str, Any], records: list[RequestRecord], snapshots: list[dict[str, Any]], out: Path, console: Console
) -> None:
    try:
        import matplotlib  # noqa: F401

        from bench.report import plots
    except ImportError as exc:  # matplotlib is an optional dependency of the benchmarks
        console.print(f"[yellow]no plots: {exc} (pip install matplotlib)[/]")
        return
    engine = report["engine"]
    plots.attainment_vs_rate(report, out / "attainment_vs_rate.png")
    for i, _ in enumerate(report["runs"]):
        suffix = "" if len(report["runs"]) == 1 else f"_run{i}"
        plots.timelines([r for r in records if r.run == i], engine, out / f"timeline{suffix}.png")
        plots.states_timeline([s for s in snapshots if s["run"] == i], engine, out / f"states{suffix}.png")
