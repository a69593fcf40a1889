"""What a calibration of the sim engine needs from a live run, besides the per-request records
(requests.jsonl): the engines' own ``sglang:*`` series scraped through chimera's ``/metrics``
before and after the trace, the scheduler's "Decode batch" / "Prefill batch" log lines, and
where the numbers came from (GPU, driver, SGLang, command, date). ``bench.gpu.trace`` collects
it into calibration_data.json; ``bench.calibration.calibrate`` fits from it.

SGLang's scheduler logs, every ``--decode-log-interval`` decode steps (0.5.x format):

    Decode batch, #running-req: 3, #token: 2048, token usage: 0.01, cuda graph: True,
        gen throughput (token/s): 345.67, #queue-req: 0

gen throughput = tokens generated since the previous such line / the wall time since it, so with
a steady batch of N requests one decode step took N / throughput seconds. The interval also holds
any prefill the scheduler ran in between, so each sample carries how many "Prefill batch" lines
came since the previous decode line (0 = a clean interval of decode steps only).
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

SCHEMA = "chimera-calibration-data/1"
_DECODE = re.compile(
    r"Decode batch(?: \[\d+\])?[.,] #running-req: (\d+),(.*?)"
    r"gen throughput \(token/s\): ([\d.]+)"
)
_TOKENS = re.compile(r"#token: (\d+)")
_PREFILL = re.compile(r"Prefill batch\b.*?#new-token: (\d+)")

Sample = tuple[str, dict[str, str], float]  # (sample name, labels, value)


@dataclass(frozen=True)
class DecodeLine:
    """One "Decode batch" line: the batch, its KV tokens (None if not logged), the generation
    rate since the previous line, and the prefill batches logged since that line."""

    running: int
    kv_tokens: int | None
    gen_tokens_per_s: float
    prefills_before: int
    first: bool  # no earlier decode line: its interval started at server start (unusable)

    @property
    def step_s(self) -> float | None:
        """Seconds of one decode step if the interval held only decode steps of this batch."""
        if self.first or self.prefills_before or self.gen_tokens_per_s <= 0:
            return None
        return self.running / self.gen_tokens_per_s


def parse_engine_log(text: str) -> tuple[list[DecodeLine], int, int]:
    """(decode lines, prefill batches, prefill tokens) of one SGLang server's log."""
    decode: list[DecodeLine] = []
    prefills = prefill_tokens = since = 0
    for line in text.splitlines():
        if m := _PREFILL.search(line):
            prefills += 1
            since += 1
            prefill_tokens += int(m.group(1))
        elif m := _DECODE.search(line):
            tokens = _TOKENS.search(m.group(2))
            decode.append(
                DecodeLine(
                    int(m.group(1)),
                    int(tokens.group(1)) if tokens else None,
                    float(m.group(3)),
                    since,
                    first=not decode,
                )
            )
            since = 0
    return decode, prefills, prefill_tokens


def engine_logs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Log samples of every engine log in ``run_dir`` (chimera's --run-dir), by file stem
    (the instance id with ``@`` as ``-``)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob("*.log")):
        decode, prefills, tokens = parse_engine_log(path.read_text(errors="replace"))
        out[path.stem] = {"decode": [asdict(d) for d in decode], "prefill_batches": prefills, "prefill_tokens": tokens}
    return out


def scrape_sglang(client: httpx.Client, base_url: str) -> dict[str, list[Sample]]:
    """The engines' ``sglang:*`` samples on chimera's /metrics, by chimera instance."""
    r = client.get(base_url + "/metrics", timeout=30.0)
    r.raise_for_status()
    out: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(r.text):
        if not fam.name.startswith("sglang:"):
            continue
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "server"}
            out.setdefault(s.labels.get("server", "?"), []).append((s.name, labels, s.value))
    return out


def provenance(engine: str, command: list[str]) -> dict[str, Any]:
    """Where the numbers come from: the GPU and driver (nvidia-smi), the SGLang and torch
    versions installed, the host, the command and the date."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "engine": engine,
        "simulated": engine == "sim",
        "command": command,
        "gpus": _gpus(),
        "sglang": _version("sglang"),
        "torch": _version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "chimera_commit": _git_commit(),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    fields = ("name", "driver_version", "memory.total", "pci.bus_id")
    try:
        r = subprocess.run(
            [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return []
    return [
        dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
        for line in r.stdout.splitlines()
        if line.strip()
    ]


def _git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return r.stdout.strip() or None
