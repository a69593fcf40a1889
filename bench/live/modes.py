"""``python -m bench.live.modes``: the same trace against chimera in each deployment mode.

The placements file's top-level ``mode`` (static | elastic | full, orchestrator/config/) is
rewritten into OUT/<mode>/placements.yaml; each mode gets a fresh chimera and a full
``bench.live.run`` (same seed, so the very same requests) into OUT/<mode>/; OUT/modes.json holds every
mode's summary and the ratios of elastic and full to static. A mode that fails is reported with
its error and the comparison goes on.

    python -m bench.live.modes --placements placements/example.yaml --trace synthetic --rate 4 \\
        --duration 60 --out runs/modes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from bench.live import run
from bench.report import write_json
from bench.report.document import SCHEMA
from orchestrator.config import Yaml12Loader, model_from_prism
from orchestrator.types import MODES

console = run.console
METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("joint attainment", ("attainment", "joint")),
    ("TTFT attainment", ("attainment", "ttft")),
    ("TPOT attainment", ("attainment", "tpot")),
    ("goodput req/s", ("goodput", "requests_per_s")),
    ("output tok/s", ("throughput", "output_tokens_per_s")),
    ("TTFT p99 s", ("latency_s", "ttft", "p99")),
    ("E2E p99 s", ("latency_s", "e2e", "p99")),
)


def with_mode(placements: Path, mode: str, out: Path) -> Path:
    """A copy of the placements file with ``mode`` set (Prism's JSON list is converted)."""
    text = placements.read_text()
    # chimera's YAML 1.2 loader: PyYAML's own reads the key `on:` as the boolean True
    raw: Any = json.loads(text) if placements.suffix == ".json" else yaml.load(text, Loader=Yaml12Loader)
    if isinstance(raw, list):
        raw = {"models": [model_from_prism(i, m) for i, m in enumerate(raw)]}
    if not isinstance(raw, dict):
        raise ValueError(f"{placements}: not a placements file (expected a mapping)")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "placements.yaml"
    path.write_text(yaml.safe_dump({**raw, "mode": mode}, sort_keys=False))
    return path


def _get(summary: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    v: Any = summary
    for k in keys:
        v = v.get(k) if isinstance(v, dict) else None
    return v if isinstance(v, int | float) else None


def ratios(results: dict[str, Any], base: str = "static") -> dict[str, Any]:
    """metric -> mode -> [ratio of each run to the base mode's same run] (None: undefined)."""
    out: dict[str, Any] = {}
    if not results.get(base, {}).get("ok"):
        return out
    for mode, res in results.items():
        if mode == base or not res.get("ok"):
            continue
        per_metric = {}
        for name, keys in METRICS:
            vals = []
            for mine, theirs in zip(res["runs"], results[base]["runs"], strict=False):
                a, b = _get(mine["overall"], keys), _get(theirs["overall"], keys)
                vals.append(None if a is None or not b else a / b)
            per_metric[name] = vals
        out[f"{mode}/{base}"] = per_metric
    return out


def table(results: dict[str, Any], simulated: bool) -> Table:
    t = Table(title="deployment modes, first run" + (" — SIMULATED" if simulated else ""))
    t.add_column("metric")
    for mode in results:
        t.add_column(mode, justify="right")
    for name, keys in METRICS:
        row = []
        for res in results.values():
            v = _get(res["runs"][0]["overall"], keys) if res.get("ok") else None
            row.append("failed" if not res.get("ok") else "-" if v is None else f"{v:.3g}")
        t.add_row(name, *row)
    return t


def main(argv: list[str] | None = None) -> int:
    p = run.build_parser()
    p.prog, p.description = "python -m bench.live.modes", __doc__
    p.add_argument("--modes", default=",".join(MODES), help="modes to compare, in order")
    args = p.parse_args(argv)
    if not args.placements or args.url:
        console.print("[red]error:[/] bench.live.modes starts chimera itself: give --placements, not --url")
        return 2
    results: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    for mode in args.modes.split(","):
        out = args.out / mode
        console.rule(f"mode: {mode}")
        try:
            mode_args = argparse.Namespace(**{**vars(args), "placements": with_mode(args.placements, mode, out)})
            report = run.benchmark(mode_args, out)
            engine = report["engine"]
            results[mode] = {
                "ok": True,
                "report": str(out / "report.json"),
                "runs": [{"label": r["label"], "overall": r["overall"]} for r in report["runs"]],
            }
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one mode's failure is data
            console.print(f"[red]mode {mode} failed:[/] {exc}", markup=False)
            results[mode] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    doc = {
        "schema": SCHEMA + "+modes",
        "engine": engine,
        "placements": str(args.placements),
        "modes": results,
        "ratios": ratios(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "modes.json", doc)
    console.print(table(results, bool(engine.get("simulated"))))
    console.print(f"wrote {args.out / 'modes.json'}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
