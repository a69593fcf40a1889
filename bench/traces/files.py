"""Parsers of the public traces in ``bench/traces/data`` (provenance and trimming: its README.md).

Each parser returns ``TraceRow``s sorted by time, in trace seconds from the trace's first
arrival, with the trace's own model key (``None`` for single-model traces). Mapping rows onto
the placements' models, time scaling, replication and windows are done in build.py.

- azure_llm_2023_code.csv, azure_llm_2023_conv.csv (one model): TIMESTAMP
  (``2023-11-16 18:17:03.9799600``), ContextTokens, GeneratedTokens;
- lmsys_arena_vtc_27models.csv (27 models m0..m26): arrival_s, model, prompt_len, output_len;
- mooncake_conversation_trace.jsonl.gz (one model): timestamp (ms), input_length,
  output_length (hash_ids, the shared-prefix blocks, are not used: prompts are synthetic);
- servegen_model_rates.csv (rates only): model, window_start_s, total_rate_rps per 10 minutes.

ServeGen gives rates, not requests: ``servegen_arrivals`` draws Gamma arrivals (cv 1 = Poisson)
at each model's window rate; lengths then come from the synthetic ranges.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from bench.traces.synthetic import gamma_gaps

FILES = {
    "azure_code": "azure_llm_2023_code.csv",
    "azure_conv": "azure_llm_2023_conv.csv",
    "lmsys": "lmsys_arena_vtc_27models.csv",
    "mooncake": "mooncake_conversation_trace.jsonl.gz",
    "servegen": "servegen_model_rates.csv",
}
SERVEGEN_WINDOW_S = 600.0


class TraceFileError(ValueError):
    """A trace file is missing or malformed (fatal: the message names the file and line)."""


@dataclass(frozen=True)
class TraceRow:
    t_s: float  # seconds from the trace's first arrival
    prompt_tokens: int
    output_tokens: int
    model_key: str | None  # the trace's own model name; None for single-model traces
    where: str  # "file:line", for messages and the request's source


def default_traces_dir() -> Path:
    """``bench/traces/data``: the traces ship with the repository and in the wheel."""
    return Path(__file__).resolve().parent / "data"


def missing_message(path: Path) -> str:
    """What to say when a trace file is not there: which file, and where to get it."""
    return (
        f"trace file {path.name} not found in {path.parent}. The public traces ship with chimera "
        f"in bench/traces/data (here {default_traces_dir()}); in a checkout, `git checkout -- "
        f"bench/traces/data` restores them, and --traces-dir DIR reads them from another folder. "
        f"Where each file comes from: bench/traces/data/README.md"
    )


def trace_path(name: str, traces_dir: Path) -> Path:
    if name not in FILES:
        raise TraceFileError(f"unknown trace {name!r}; known: {', '.join(FILES)}")
    path = traces_dir / FILES[name]
    if not path.is_file():
        raise TraceFileError(missing_message(path))
    return path


@contextmanager
def _open(path: Path, gz: bool = False) -> Iterator[TextIO]:
    """The file as text; a missing or unreadable file becomes a TraceFileError."""
    try:
        f = gzip.open(path, "rt") if gz else open(path, newline="")
    except FileNotFoundError as exc:
        raise TraceFileError(missing_message(path)) from exc
    except OSError as exc:
        raise TraceFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with f:
        yield f


def _csv_rows(path: Path, needed: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
    with _open(path) as f:
        reader = csv.DictReader(f)
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise TraceFileError(f"{path}: missing columns {sorted(missing)}")
        yield from enumerate(reader, start=2)


def _ints(path: Path, line: int, *vals: str | int) -> list[int]:
    try:
        return [int(v) for v in vals]
    except ValueError as exc:
        raise TraceFileError(f"{path}:{line}: not an integer: {exc}") from exc


def read_azure(path: Path, limit: int | None = None) -> list[TraceRow]:
    rows, t0 = [], None
    for line, r in _csv_rows(path, {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}):
        try:
            ts = datetime.fromisoformat(r["TIMESTAMP"]).timestamp()
        except ValueError as exc:
            raise TraceFileError(f"{path}:{line}: bad TIMESTAMP {r['TIMESTAMP']!r}") from exc
        t0 = ts if t0 is None else t0
        p, o = _ints(path, line, r["ContextTokens"], r["GeneratedTokens"])
        rows.append(TraceRow(ts - t0, p, o, None, f"{path.name}:{line}"))
        if limit is not None and len(rows) >= limit:
            break
    return _sorted(rows)


def read_lmsys(path: Path, limit: int | None = None) -> list[TraceRow]:
    rows = []
    for line, r in _csv_rows(path, {"arrival_s", "model", "prompt_len", "output_len"}):
        p, o = _ints(path, line, r["prompt_len"], r["output_len"])
        rows.append(TraceRow(float(r["arrival_s"]), p, o, r["model"], f"{path.name}:{line}"))
        if limit is not None and len(rows) >= limit:
            break
    return _sorted(rows)


def read_mooncake(path: Path, limit: int | None = None) -> list[TraceRow]:
    rows = []
    with _open(path, gz=True) as f:
        for line, text in enumerate(f, start=1):
            try:
                d = json.loads(text)
                p, o = _ints(path, line, d["input_length"], d["output_length"])
                rows.append(TraceRow(float(d["timestamp"]) / 1000.0, p, o, None, f"{path.name}:{line}"))
            except (KeyError, TypeError, json.JSONDecodeError) as exc:
                raise TraceFileError(f"{path}:{line}: {type(exc).__name__}: {exc}") from exc
            if limit is not None and len(rows) >= limit:
                break
    return _sorted(rows)


def read_servegen_rates(path: Path) -> dict[str, dict[float, float]]:
    """model -> {window start s: requests per second}."""
    out: dict[str, dict[float, float]] = {}
    for line, r in _csv_rows(path, {"model", "window_start_s", "total_rate_rps"}):
        try:
            out.setdefault(r["model"], {})[float(r["window_start_s"])] = float(r["total_rate_rps"])
        except ValueError as exc:
            raise TraceFileError(f"{path}:{line}: {exc}") from exc
    return out


def servegen_arrivals(
    rates: dict[str, dict[float, float]], start_s: float, span_s: float, rate_scale: float, cv: float, seed: int
) -> list[tuple[float, str]]:
    """(trace time, ServeGen model) of arrivals in [start_s, start_s + span_s): per model, a
    renewal process with Gamma gaps (coefficient of variation ``cv``) at the rate of the
    10-minute window it is in, times ``rate_scale``."""
    rng = random.Random(seed)
    out = []
    for model in sorted(rates):
        windows = rates[model]
        t = start_s
        while t < start_s + span_s:
            w = SERVEGEN_WINDOW_S * (t // SERVEGEN_WINDOW_S)
            rate = windows.get(w, 0.0) * rate_scale
            end = min(w + SERVEGEN_WINDOW_S, start_s + span_s)
            if rate <= 0:
                t = end
                continue
            t += gamma_gaps(rng, 1, rate, cv)[0]
            if t < end:
                out.append((t, model))
            elif end < start_s + span_s:
                t = end  # memoryless restart at the next window's rate (exact for cv = 1)
    return sorted(out)


def _sorted(rows: list[TraceRow]) -> list[TraceRow]:
    return sorted(rows, key=lambda r: r.t_s)
