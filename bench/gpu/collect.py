"""``python -m bench.gpu.collect DEVICE_DIR OUT_DIR``: one system's run of the one-GPU experiment,
as it came back from the lent GPU (``bash bench/gpu/experiment.sh``: DEVICE_DIR holds
experiment.json, table.txt and run.tgz), turned into what bench/results/ keeps:

- experiment.json and table.txt, as they are;
- requests.jsonl.gz: every request of the run, without its inter-token latencies (``itl_s``,
  nine tenths of the bytes; TTFT, TPOT and end-to-end times stay);
- engine-batches.tsv.gz: every SGLang "Prefill batch" / "Decode batch" line of every engine's
  log (time, running and queued requests, tokens, new tokens, throughput, whether a decode
  batch ran on a CUDA graph: "True"/"False", empty for older SGLang lines), the input of
  ``python -m bench.calibration.h200_multi``.

    python -m bench.gpu.collect /work/.device/3/full bench/results/gpu-experiment-h200-a3/full
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import shutil
import sys
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

BATCH_FIELDS = ("engine", "time", "kind", "running", "queue", "tokens", "new_tokens", "throughput", "graph")
# SGLang's scheduler log lines (python/sglang/srt/managers/scheduler_metrics_mixin.py in 0.5.17)
_LINE = re.compile(r"^\[(?P<time>[\d-]+ [\d:]+)[^\]]*\] (?P<kind>Prefill|Decode) batch[ ,]")
_FIELDS = {
    "running": re.compile(r"#running-req: (\d+)"),
    "queue": re.compile(r"#queue-req: (\d+)"),
    "tokens": re.compile(r"#token: (\d+)"),
    "new_tokens": re.compile(r"#new-token: (\d+)"),
    "throughput": re.compile(r"(?:input|gen) throughput \(token/s\): ([\d.]+)"),
    "graph": re.compile(r"cuda graph: (True|False)"),  # False: the batch ran eagerly
}
_ENGINE_LOG = re.compile(r"(?:^|/)engines/(?P<engine>[^/]+)\.log$")


def batch_rows(engine: str, lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """The batch lines of one engine's log, as rows of BATCH_FIELDS (empty where a line has none)."""
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        row = {"engine": engine, "time": m["time"], "kind": m["kind"].lower()}
        for name, pattern in _FIELDS.items():
            f = pattern.search(line)
            row[name] = f.group(1) if f else ""
        yield row


def collect(device_dir: Path, out: Path) -> dict[str, int]:
    """Write OUT's four files from DEVICE_DIR; returns what it counted."""
    for name in ("experiment.json", "run.tgz"):
        if not (device_dir / name).is_file():
            raise SystemExit(f"error: {device_dir / name} not found: DEVICE_DIR is one system's folder of a device run")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("experiment.json", "table.txt"):
        if (device_dir / name).is_file():
            shutil.copyfile(device_dir / name, out / name)
    requests = 0
    rows: list[dict[str, str]] = []
    with tarfile.open(device_dir / "run.tgz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                continue
            if Path(member.name).name == "requests.jsonl":
                with gzip.open(out / "requests.jsonl.gz", "wt") as dst:
                    for line in io.TextIOWrapper(f, encoding="utf-8"):
                        if line.strip():
                            doc = json.loads(line)
                            doc.pop("itl_s", None)
                            dst.write(json.dumps(doc) + "\n")
                            requests += 1
            elif (m := _ENGINE_LOG.search(member.name)) is not None:
                rows += batch_rows(m["engine"], io.TextIOWrapper(f, encoding="utf-8", errors="replace"))
    with gzip.open(out / "engine-batches.tsv.gz", "wt", newline="") as dst:
        w = csv.DictWriter(dst, BATCH_FIELDS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return {"requests": requests, "batch_lines": len(rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("device_dir", type=Path, help="one system's folder of a device run (experiment.json, run.tgz)")
    ap.add_argument("out", type=Path, help="where the results go (created)")
    args = ap.parse_args(argv)
    counts = collect(args.device_dir, args.out)
    print(f"wrote {args.out}: {counts['requests']} requests, {counts['batch_lines']} engine batch lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
