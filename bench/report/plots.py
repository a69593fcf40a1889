"""Plots of a report (matplotlib, Agg backend): SLO attainment vs offered rate, per-model
timelines of arrivals and latency, and the instance-state (and memory gauge) timeline.
Every title says "SIMULATED" when the engine was simulated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.client.record import RequestRecord


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tag(engine: dict[str, Any]) -> str:
    return " (SIMULATED)" if engine.get("simulated") else f" ({engine.get('label', '?')})"


def attainment_vs_rate(report: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    runs = sorted(report["runs"], key=lambda r: r["offered_rate_rps"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [r["offered_rate_rps"] for r in runs]
    for key, style in (("joint", "o-"), ("ttft", "s--"), ("tpot", "^:")):
        ax.plot(x, [r["overall"]["attainment"][key] or 0 for r in runs], style, label=f"all models, {key}")
    models = sorted({m for r in runs for m in r["per_model"]})
    for m in models:
        pts = [
            (r["offered_rate_rps"], r["per_model"][m]["attainment"]["joint"] or 0) for r in runs if m in r["per_model"]
        ]
        ax.plot(*zip(*pts, strict=True), ".-", alpha=0.6, label=f"{m}, joint")
    ax.set(
        xlabel="offered rate (req/s)",
        ylabel="SLO attainment",
        ylim=(-0.02, 1.02),
        title="SLO attainment vs rate" + _tag(report["engine"]),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timelines(records: Sequence[RequestRecord], engine: dict[str, Any], path: Path, bin_s: float = 1.0) -> Path:
    """Per model: arrivals per second (bars) and TTFT / E2E of each request at its arrival
    (points; failures as red crosses)."""
    plt = _plt()
    models = sorted({r.model for r in records}) or ["-"]
    fig, axes = plt.subplots(len(models), 1, figsize=(9, 2.3 * len(models)), sharex=True, squeeze=False)
    for ax, m in zip(axes[:, 0], models, strict=True):
        mine = [r for r in records if r.model == m]
        end = max((r.arrival_s for r in mine), default=0.0) + bin_s
        edges = [i * bin_s for i in range(int(end / bin_s) + 2)]
        ax.hist([r.arrival_s for r in mine], bins=edges, color="0.85", label="arrivals/bin")
        ax.set_ylabel(f"{m}\nreq per {bin_s:g}s", fontsize=8)
        lat = ax.twinx()
        ok = [r for r in mine if r.ok]
        lat.plot([r.arrival_s for r in ok], [r.ttft_s for r in ok], ".", ms=3, label="TTFT")
        lat.plot([r.arrival_s for r in ok], [r.e2e_s for r in ok], ".", ms=2, alpha=0.4, label="E2E")
        bad = [r.arrival_s for r in mine if not r.ok]
        lat.plot(bad, [0.0] * len(bad), "rx", label="failed")
        lat.set_yscale("symlog", linthresh=0.01)
        lat.set_ylabel("latency (s)", fontsize=8)
        lat.legend(fontsize=6, loc="upper right")
    axes[-1, 0].set_xlabel("time since start of run (s)")
    fig.suptitle("requests and latency per model" + _tag(engine))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def states_timeline(snapshots: Sequence[dict[str, Any]], engine: dict[str, Any], path: Path) -> Path | None:
    """Instance states over time; memory gauges (chimera_*bytes*) under them when exported."""
    if not snapshots:
        return None
    plt = _plt()
    order = ["stopped", "failed", "backoff", "pending", "starting", "parked", "parking", "waking", "awake"]
    instances = sorted({i for s in snapshots for i in s["states"]})
    mem_keys = sorted({k for s in snapshots for k in s["gauges"] if "bytes" in k})
    fig, axes = plt.subplots(2 if mem_keys else 1, 1, figsize=(9, 5 if mem_keys else 3), sharex=True, squeeze=False)
    ax = axes[0, 0]
    for inst in instances:
        pts = [
            (s["t_s"], order.index(s["states"][inst]["state"]))
            for s in snapshots
            if inst in s["states"] and s["states"][inst]["state"] in order
        ]
        if pts:
            ax.step(*zip(*pts, strict=True), where="post", label=inst)
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.set_title("instance states" + _tag(engine))
    ax.legend(fontsize=6)
    if mem_keys:
        mem = axes[1, 0]
        for k in mem_keys:
            mem.plot(
                [s["t_s"] for s in snapshots if k in s["gauges"]],
                [s["gauges"][k] / 2**30 for s in snapshots if k in s["gauges"]],
                label=k,
            )
        mem.set_ylabel("GiB")
        mem.legend(fontsize=5)
    axes[-1, 0].set_xlabel("time since start of run (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
