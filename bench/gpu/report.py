"""``python -m bench.gpu.report DIR...``: the one-GPU experiment's tables and plot.

Reads experiment.json from each DIR (one system's run of bench/gpu/experiment.py, live or
``--engine des``), groups them by set-up and trace, and prints Markdown for docs/benchmarks.md:
joint TTFT+TPOT attainment against rate per system, the highest rate at 99% with the ratios
the issue's targets name (full/static, full/swap, full vs elastic), and, where a des run sits
beside a live one of the same system, simulated against real per model (attainment, TTFT and
TPOT p50/p99). Every table says what it ran on (SIMULATED unless stock SGLang on a GPU).
Writes report.md, summary.json and attainment_<setup>_<trace>.png into --out.

    python -m bench.gpu.report runs/exp/* --out bench/results/gpu-experiment
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.gpu import measure
from bench.gpu.experiment import hardware
from bench.gpu.systems import SYSTEMS
from bench.report import write_json

Run = dict[str, Any]


def load(paths: Sequence[Path]) -> list[Run]:
    runs = []
    for p in paths:
        f = p / "experiment.json" if p.is_dir() else p
        doc = json.loads(f.read_text())
        doc["_path"] = str(f)
        runs.append(doc)
    return runs


def _ratio(a: float | None, b: float | None) -> str:
    if a is None:
        return "-"
    if not b:
        return "inf" if a else "-"
    return f"{a / b:.2f}x"


def unbracketed(run: Run) -> bool:
    """Whether ``run``'s highest rate at 99% is only a lower bound: every rate it swept attained
    99%, so its top rate is the highest measured, not the highest there is."""
    best = run.get("max_rate_at_99")
    offered = [p["offered_rate_rps"] for p in run.get("rates", []) if p.get("offered_rate_rps") is not None]
    return best is not None and bool(offered) and best >= max(offered)


def _bound_ratio(full: float | None, other: float | None, full_low: bool, other_low: bool) -> str:
    """full's highest rate at 99% over another system's, marked where either is a lower bound
    (``unbracketed``): ">= r" when only full's is, "<= r" when only the other's, "?" when both."""
    text = _ratio(full, other)
    if full is None or not other or not (full_low or other_low):
        return text
    return "? (neither bracketed)" if full_low and other_low else (">= " if full_low else "<= ") + text


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _ms(d: dict[str, Any] | None, key: str) -> str:
    v = (d or {}).get(key)
    return "-" if v is None else f"{1000 * v:.0f}"


def group(runs: Sequence[Run]) -> dict[tuple[str, str], dict[str, dict[str, Run]]]:
    """(setup, trace) -> engine kind ('live' | 'des') -> system -> run. Two runs of one system
    (a sweep split over two device commands) become one: their rates together, sorted, a rate
    swept twice taken from the later run given, and the highest rate at 99% taken anew."""
    out: dict[tuple[str, str], dict[str, dict[str, Run]]] = {}
    for r in runs:
        kind = "des" if r.get("engine") == "des" else "live"
        systems = out.setdefault((r["setup"], r["trace"]), {}).setdefault(kind, {})
        systems[r["system"]] = merged(systems[r["system"]], r) if r["system"] in systems else r
    return out


def merged(first: Run, later: Run) -> Run:
    """One system's two runs as one (``group``); the later run's fields, the paths of both."""
    by_rate = {p["rate"]: p for p in first["rates"]} | {p["rate"]: p for p in later["rates"]}
    rates = [by_rate[k] for k in sorted(by_rate)]
    pts = [(p["offered_rate_rps"], p["overall"]["attainment"]["joint"]) for p in rates]
    return {
        **later,
        "rates": rates,
        "max_rate_at_99": measure.max_rate_at(pts),
        "_path": f"{first.get('_path')} + {later.get('_path')}",
    }


def tables(key: tuple[str, str], kinds: dict[str, dict[str, Run]]) -> tuple[str, dict[str, Any]]:
    setup, trace = key
    lines: list[str] = []
    summary: dict[str, Any] = {"setup": setup, "trace": trace}
    for kind, systems in sorted(kinds.items(), key=lambda kv: kv[0] != "live"):
        order = [s for s in SYSTEMS if s in systems]
        hw = "; ".join(sorted({hardware(systems[s]) for s in order}))
        lines += [f"### Set-up {setup}, {trace} trace ({'live' if kind == 'live' else 'simulator'}): {hw}", ""]
        rates = sorted({p["rate"] for s in order for p in systems[s]["rates"]})
        # issue 18's targets compare joint attainment at one rate (full >= 2x static, >= 1.5x swap)
        others = [o for o in ("static", "swap") if "full" in order and o in order]
        lines.append("| rate | " + " | ".join([*(f"{s} joint" for s in order), *(f"full/{o}" for o in others)]) + " |")
        lines.append("|---" * (len(order) + len(others) + 1) + "|")
        joint_ratios: dict[str, dict[str, float | None]] = {}
        for rate in rates:
            joint: dict[str, float | None] = {}
            for s in order:
                p = next((p for p in systems[s]["rates"] if p["rate"] == rate), None)
                joint[s] = None if p is None else p["overall"]["attainment"]["joint"]
            # a rate the other system did not run compares with nothing ("-"); one it ran at 0%: "inf"
            cells = [_pct(joint[s]) for s in order] + [
                "-" if joint[o] is None else _ratio(joint["full"], joint[o]) for o in others
            ]
            joint_ratios[f"{rate:g}"] = {
                f"full/{o}": None if joint["full"] is None or not joint[o] else joint["full"] / joint[o] for o in others
            }
            lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "| system | max rate at 99% (req/s) | goodput at top rate (req/s) | wakes | time parked (s) "
            "| held | shed | unserved |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        best = {s: systems[s].get("max_rate_at_99") for s in order}
        low = {s: unbracketed(systems[s]) for s in order}  # every swept rate at 99%: a lower bound
        for s in order:
            pts = systems[s]["rates"]
            top = pts[-1] if pts else {}
            c = [
                sum((p.get("chimera") or {}).get(k) or 0 for p in pts)
                for k in (
                    "wakes",
                    "time_parked_s",
                    "held",
                    "shed_client",
                )
            ]
            unserved = sum(p.get("unserved", 0) for p in pts)
            good = (top.get("overall") or {}).get("goodput", {}).get("requests_per_s")
            lines.append(
                f"| {s} | {'-' if best[s] is None else f'>= {best[s]:.2f}' if low[s] else f'{best[s]:.2f}'} | "
                f"{'-' if good is None else f'{good:.2f}'} | {c[0]:.0f} | {c[1]:.0f} | {c[2]:.0f} | "
                f"{c[3]:.0f} | {unserved} |"
            )
        # "inf": the other system misses 99% at every swept rate; "-": not run, or full misses it;
        # ">=" / "<=" / "?": full's, the other's or both highest rates are lower bounds (unbracketed)
        ratios = {
            f"full/{o}": _bound_ratio(best.get("full"), best.get(o), low["full"], low[o])
            for o in ("static", "swap", "elastic")
            if "full" in best and o in best
        }
        lines += [
            "",
            "Highest rate at 99%: "
            + ", ".join(f"{k} {v}" for k, v in ratios.items())
            + " (targets: A full/static >= 3.5x, B full/swap >= 1.5x, full never below elastic; prism18 at the"
            " trace's rate: joint attainment full/static >= 2x, full/swap >= 1.5x)",
            "",
        ]
        summary[kind] = {
            "max_rate_at_99": best,
            "lower_bound": low,
            "ratios": ratios,
            "joint_ratios": joint_ratios,
            "hardware": hw,
        }
    if "live" in kinds and "des" in kinds:
        lines += sim_vs_real(kinds["live"], kinds["des"])
    return "\n".join(lines), summary


def sim_vs_real(live: dict[str, Run], des: dict[str, Run]) -> list[str]:
    """Per system, rate and model: joint attainment and TTFT/TPOT p50/p99, simulated vs real."""
    lines = [
        "#### Simulated (des) vs real, per model",
        "",
        "| system | rate | model | joint real / sim | TTFT p50 ms real / sim | TTFT p99 ms real / sim "
        "| TPOT p50 ms real / sim | TPOT p99 ms real / sim |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in [s for s in SYSTEMS if s in live and s in des]:
        for p in live[s]["rates"]:
            q = next((q for q in des[s]["rates"] if q["rate"] == p["rate"]), None)
            if q is None:
                continue
            if q["trace_digest"] != p["trace_digest"]:
                lines.append(f"| {s} | {p['rate']:g} | (different traces: not compared) |||||")
                continue
            for m in sorted(p["per_model"]):
                a, b = p["per_model"][m], q["per_model"].get(m, {})
                la, lb = a["latency_s"], b.get("latency_s", {})
                lines.append(
                    f"| {s} | {p['rate']:g} | {m} | {_pct(a['attainment']['joint'])} / "
                    f"{_pct(b.get('attainment', {}).get('joint'))} | "
                    + " | ".join(
                        f"{_ms(la.get(k), f'p{q_}')} / {_ms(lb.get(k), f'p{q_}')}"
                        for k, q_ in (("ttft", 50), ("ttft", 99), ("tpot", 50), ("tpot", 99))
                    )
                    + " |"
                )
    return lines + ["", agreement(live, des), ""]


def agreement(live: dict[str, Run], des: dict[str, Run]) -> str:
    """How many of the rows above meet issue 17's targets: TTFT p99 within 20% of the real one
    and joint attainment within 3 points, per model (and joint attainment per system and rate)."""
    ttft = joint = rows = overall = points = 0
    for s in [s for s in SYSTEMS if s in live and s in des]:
        for p in live[s]["rates"]:
            q = next((q for q in des[s]["rates"] if q["rate"] == p["rate"]), None)
            if q is None or q["trace_digest"] != p["trace_digest"]:
                continue
            points += 1
            overall += abs(p["overall"]["attainment"]["joint"] - q["overall"]["attainment"]["joint"]) <= 0.03
            for m, a in p["per_model"].items():
                b = q["per_model"].get(m, {})
                real = (a["latency_s"].get("ttft") or {}).get("p99")
                sim = (b.get("latency_s", {}).get("ttft") or {}).get("p99")
                ja, jb = a["attainment"]["joint"], b.get("attainment", {}).get("joint")
                rows += 1
                ttft += real is not None and sim is not None and abs(sim - real) <= 0.2 * real
                joint += ja is not None and jb is not None and abs(ja - jb) <= 0.03
    return (
        f"Within target (simulated vs real): TTFT p99 within 20% in {ttft} of {rows} model rows; joint attainment "
        f"within 3 points in {joint} of {rows} model rows and {overall} of {points} system-rate points."
    )


def plot(key: tuple[str, str], kinds: dict[str, dict[str, Run]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for kind, systems in kinds.items():
        for s in [s for s in SYSTEMS if s in systems]:
            pts = [(p["offered_rate_rps"], p["overall"]["attainment"]["joint"]) for p in systems[s]["rates"]]
            ax.plot(
                [x for x, _ in pts],
                [100 * (y or 0) for _, y in pts],
                marker="o",
                linestyle="-" if kind == "live" else "--",
                label=f"{s} ({kind})",
            )
    ax.axhline(99, color="grey", linewidth=0.8, linestyle=":")
    hw = "; ".join(sorted({hardware(r) for systems in kinds.values() for r in systems.values()}))
    ax.set(
        xlabel="offered rate (req/s)",
        ylabel="joint TTFT+TPOT attainment (%)",
        title=f"set-up {key[0]}, {key[1]} trace\n{hw}",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("dirs", nargs="+", type=Path, help="run folders (or experiment.json files)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-experiment-report"))
    a = p.parse_args(argv)
    try:
        runs = load(a.dirs)
    except (OSError, ValueError) as exc:  # a folder without experiment.json, a torn file
        print(f"cannot read a run: {exc}", file=sys.stderr)
        return 2
    groups = group(runs)
    a.out.mkdir(parents=True, exist_ok=True)
    parts, summaries = [], []
    for key in sorted(groups):
        text, summary = tables(key, groups[key])
        png = plot(key, groups[key], a.out / f"attainment_{Path(key[0]).stem}_{key[1]}.png")
        summary["plot"] = None if png is None else png.name
        parts.append(text + (f"\n![set-up {key[0]}, {key[1]}]({png.name})\n" if png else ""))
        summaries.append(summary)
    md = "\n".join(parts)
    (a.out / "report.md").write_text(md)
    write_json(a.out / "summary.json", summaries)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
