"""Benchmark results: summaries (definitions in summary.py), report files and their schema,
the printed table, and plots."""

from bench.report.document import (
    SCHEMA,
    new_report,
    read_records,
    validate,
    write_json,
    write_jsonl,
    write_records,
)
from bench.report.summary import distribution, percentile, summarize, summarize_run
from bench.report.table import print_report

__all__ = [
    "SCHEMA",
    "distribution",
    "new_report",
    "percentile",
    "print_report",
    "read_records",
    "summarize",
    "summarize_run",
    "validate",
    "write_json",
    "write_jsonl",
    "write_records",
]
