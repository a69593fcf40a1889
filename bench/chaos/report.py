"""The chaos bench's report: one JSON document and one table, labelled SIMULATED (the engines
are the sim server, not SGLang on a GPU)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.chaos.scenarios import Result

LABEL = "SIMULATED (sim engine, CPU): engine faults are real process faults, engines are not SGLang"


def document(results: list[Result], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": LABEL,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": {"cpus": _cpus(), "python": platform.python_version()},
        "settings": settings,
        "target": "0 requests lost (reset) or hung; resources back to their baseline",
        "scenarios": [
            {
                **asdict(r),
                "sent": r.sent,
                "lost": r.lost,
                "before": r.before and asdict(r.before),
                "after": r.after and asdict(r.after),
            }
            for r in results
        ],
    }


def table(results: list[Result]) -> str:
    head = (
        "scenario",
        "sent",
        "ok",
        "clean err",
        "refused",
        "killed",
        "left",
        "lost",
        "hung",
        "recovery",
        "longest",
        "RSS MB",
        "fds",
    )
    rows = [head]
    for r in results:
        if r.skipped:
            rows.append((r.name, "skipped", *[""] * (len(head) - 2)))
            continue
        c = r.counts
        rows.append(
            (
                r.name,
                str(r.sent),
                str(c.get("ok", 0)),
                str(c.get("error", 0)),
                str(c.get("refused", 0)),
                str(c.get("killed", 0)),
                str(c.get("left", 0)),
                str(c.get("reset", 0)),
                str(c.get("hung", 0)),
                "-" if r.recovery_s is None else f"{r.recovery_s:.2f} s",
                "-" if r.longest_wait_s is None else f"{r.longest_wait_s:.2f} s",
                _pair(r, "rss_mb"),
                _pair(r, "fds"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [LABEL, ""] + [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    legend = (
        "killed: connection reset of a request sent before a SIGKILLed chimera was gone (in flight on "
        "that process or in its accept queue); lost: any other reset, or an answer that is not the API's; "
        "recovery: from the fault to the first answer to a request sent after it; longest: the longest any "
        "such request took to its answer"
    )
    notes = [f"- {r.name}: {n}" for r in results for n in ([f"skipped: {r.skipped}"] if r.skipped else r.notes)]
    return "\n".join([*lines, "", legend] + ([""] + notes if notes else [])) + "\n"


def _pair(r: Result, attr: str) -> str:
    if r.before is None or r.after is None:
        return "-"
    return f"{getattr(r.before, attr):g} -> {getattr(r.after, attr):g}"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def write(out: Path, results: list[Result], settings: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(document(results, settings), indent=1) + "\n")
    text = table(results)
    (out / "table.txt").write_text(text)
    return text
