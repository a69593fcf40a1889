"""Plots (matplotlib, PNG under docs/img/) and the summary table of the experiments' JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.perf import calibration as cal

CALIBRATION = "orchestrator/perf/calibration.py"
STAMP = f"SIMULATED ({cal.ACCELERATOR_NAME}; constants: {CALIBRATION})"
STYLE = {
    "chimera": ("tab:red", "o"),
    "muxserve-like": ("tab:blue", "s"),
    "static-partition": ("tab:gray", "^"),
    "swap-only": ("tab:green", "v"),
}


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "rate_sweep" in results:
        rs = results["rate_sweep"]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for system, curve in rs["grid"].items():
            color, marker = STYLE.get(system, ("black", "x"))
            ax.plot([c[0] for c in curve], [100 * c[1] for c in curve], marker=marker, color=color, label=system)
        ax.axhline(99, ls="--", lw=0.8, color="black")
        ax.set(
            xlabel="offered load (requests/s, all models)",
            ylabel="joint TTFT+TPOT attainment (%)",
            title=f"{rs['mix']}: 8 models on {rs['gpus']} GPUs",
            ylim=(0, 101),
        )
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / "bench-sim-rate-sweep.png"))
    for key, title in (
        ("gpu_sweep", "18 models"),
        ("large_scale", "58 models, 1 hour"),
        ("large_scale_low", "58 models, 1 hour, low load"),
    ):
        if key not in results:
            continue
        gs = results[key]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for system, grid in gs["grid"].items():
            color, marker = STYLE.get(system, ("black", "x"))
            ax.plot([g[0] for g in grid], [100 * g[1] for g in grid], marker=marker, color=color, label=system)
        ax.axhline(99, ls="--", lw=0.8, color="black")
        ax.set(
            xlabel="GPUs (H100 80GB)",
            ylabel="joint TTFT+TPOT attainment (%)",
            title=f"{title}, {gs['rate']:g} req/s",
            ylim=(0, 101),
        )
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / f"bench-sim-{key.replace('_', '-')}.png"))
    abl = [results[k] for k in ("ablations_17", "ablations", "ablations_mix8") if k in results]
    if abl:
        fig, axes = plt.subplots(1, len(abl), figsize=(6.4 * len(abl), 4.2), squeeze=False)
        for ax, ab in zip(axes[0], abl, strict=True):
            names = list(ab["runs"])
            ax.barh(names, [100 * ab["runs"][n]["joint"] for n in names], color="tab:red")
            ax.axvline(99, ls="--", lw=0.8, color="black")
            ax.set(
                xlabel="joint attainment (%)",
                xlim=(70, 100),
                title=f"{ab['mix']}, {ab['gpus']} GPUs, {ab['rate']:g} req/s",
            )
            ax.invert_yaxis()
        written.append(_save(fig, out_dir / "bench-sim-ablations.png"))
    plt.close("all")
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.text(0.99, 0.01, STAMP, ha="right", va="bottom", fontsize=6, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def table(results: dict[str, Any]) -> str:
    """The summary table (markdown)."""
    lines = [
        "| experiment | " + " | ".join(("static partition", "MuxServe-like", "swap-only", "chimera")) + " |",
        "|---|---|---|---|---|",
    ]
    systems = ("static-partition", "muxserve-like", "swap-only", "chimera")
    if "rate_sweep" in results:
        rs = results["rate_sweep"]["rate_at_99"]
        lines.append("| rate at 99% (8 models, 2 GPUs), req/s | " + " | ".join(_f(rs.get(s)) for s in systems) + " |")
    for key, label in (
        ("gpu_sweep", "fewest GPUs for 99% (18 models, 9 req/s)"),
        ("large_scale", "fewest GPUs for 99% (58 models, 10 req/s)"),
        ("large_scale_low", "fewest GPUs for 99% (58 models, 3 req/s)"),
    ):
        if key in results:
            fg = results[key]["fewest_gpus"]
            lines.append(f"| {label} | " + " | ".join(_f(fg.get(s), "> max") for s in systems) + " |")
    return "\n".join(lines)


def _f(x: float | None, none: str = "never") -> str:
    if x is None:
        return none
    return f"{x:.1f}" if isinstance(x, float) else str(x)
