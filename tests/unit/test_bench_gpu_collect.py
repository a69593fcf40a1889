from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from bench.gpu.collect import batch_rows, collect

# lines as stock SGLang 0.5.17's scheduler logs them (one engine log of an H200 run)
PREFILL = (
    "[2026-12-03 17:03:20] Prefill batch, #new-seq: 2, #new-token: 528, #cached-token: 0, token usage: 1.00, "
    "#running-req: 41, #queue-req: 0, #pending-token: 0, cuda graph: True, input throughput (token/s): 1234.5"
)
DECODE = (
    "[2026-12-03 17:03:21] Decode batch, #running-req: 41, #token: 493115, token usage: 1.00, cuda graph: False, "
    "gen throughput (token/s): 1025.58, #queue-req: 5"
)


def test_batch_lines_are_read_field_by_field_and_other_lines_skipped() -> None:
    rows = list(batch_rows("llama-8b-gpu0", [PREFILL, "[2026-12-03 17:03:21] KV cache pool is full.", DECODE]))
    assert rows == [
        {"engine": "llama-8b-gpu0", "time": "2026-12-03 17:03:20", "kind": "prefill", "running": "41",
         "queue": "0", "tokens": "", "new_tokens": "528", "throughput": "1234.5", "graph": "True"},
        {"engine": "llama-8b-gpu0", "time": "2026-12-03 17:03:21", "kind": "decode", "running": "41",
         "queue": "5", "tokens": "493115", "new_tokens": "", "throughput": "1025.58", "graph": "False"},
    ]  # fmt: skip


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_collect_keeps_the_json_drops_inter_token_latencies_and_extracts_batches(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "experiment.json").write_text('{"schema": "x"}')
    (dev / "table.txt").write_text("table\n")
    reqs = [{"id": i, "ttft_s": 0.1, "itl_s": [0.01] * 50} for i in range(3)]
    with tarfile.open(dev / "run.tgz", "w:gz") as tar:
        _add(tar, "requests.jsonl", "".join(json.dumps(r) + "\n" for r in reqs))
        _add(tar, "chimera/engines/a-gpu0.log", f"{PREFILL}\nnoise\n{DECODE}\n")
        _add(tar, "chimera/engines/b-gpu0.log", f"{DECODE}\n")
        _add(tar, "chimera/chimera.log", f"{DECODE}\n")  # not an engine log
    counts = collect(dev, tmp_path / "out")
    assert counts == {"requests": 3, "batch_lines": 3}
    with gzip.open(tmp_path / "out/requests.jsonl.gz", "rt") as f:
        assert [json.loads(line) for line in f] == [{"id": i, "ttft_s": 0.1} for i in range(3)]
    with gzip.open(tmp_path / "out/engine-batches.tsv.gz", "rt") as f:
        assert sorted((r["engine"], r["kind"]) for r in csv.DictReader(f, delimiter="\t")) == [
            ("a-gpu0", "decode"),
            ("a-gpu0", "prefill"),
            ("b-gpu0", "decode"),
        ]
    assert (tmp_path / "out/table.txt").read_text() == "table\n"


def test_a_folder_without_the_run_is_refused_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="run.tgz not found"):
        (tmp_path / "experiment.json").write_text("{}")
        collect(tmp_path, tmp_path / "out")
