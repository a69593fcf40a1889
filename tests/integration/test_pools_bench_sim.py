"""The pool benchmarks run end to end on the sim engine (small and fast): the SIMULATED one-GPU
bench (bench.live.pools) and the GPU script's driver (bench.gpu.pools --engine sim), so the
GPU run only has to be run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu import pools as gpu_pools
from bench.live import pools as live_pools

pytestmark = pytest.mark.slow


def test_live_pools_bench_answers_every_request(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--models", "6", "--checkpoints", "3", "--adapters", "12"]
    argv += ["--rate", "3", "--duration", "4", "--skews", "1", "--sim-speed", "0.05"]
    assert live_pools.main(argv) == 0
    report = json.loads((tmp_path / "pools.json").read_text())
    assert report["label"].startswith("SIMULATED")
    assert report["shared_weights"]["ft-0"] == ["m0", "m3"]
    (run,) = report["runs"]
    for fam in ("pooled", "adapters"):
        assert run[fam]["errors"] == 0 and run[fam]["answered"] == run[fam]["requests"] > 0


def test_gpu_pools_driver_on_the_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIMERA_SIM_SPEED", "0.05")
    argv = ["--engine", "sim", "--out", str(tmp_path / "out"), "--ckpt-dir", str(tmp_path / "ck"), "--reps", "1"]
    assert gpu_pools.main(argv) == 0  # no wrong output; m0-copy answers as m0
    report = json.loads((tmp_path / "out" / "pools-gpu.json").read_text())
    assert report["retarget_disk_phases"][0]["update_weights_s"] > 0
    assert len(report["wake_ttft_s"]) == 1 and report["wrong_outputs"] == []
    (wake,) = report["wake_phases"]  # from chimera's log line
    # served from the continue on: the output is checked beside the first requests, not before
    assert {"wake_s", "resume_s", "continue_s"} <= set(wake) and "probe_s" not in wake and wake["resume_s"] > 0
    assert wake["wake_s"] == pytest.approx(wake["resume_s"] + wake["continue_s"], abs=2e-3)


def test_model_paths_beyond_the_distinct_checkpoints_are_hard_links(tmp_path: Path) -> None:
    for k in range(2):
        (tmp_path / f"ft-{k}").mkdir()
        (tmp_path / f"ft-{k}" / "model.safetensors").write_bytes(bytes([k]) * 10)
    paths = live_pools.aliases(tmp_path, 2, 5)
    assert paths == [str(tmp_path / f"ft-{k}") for k in range(5)]
    for k in range(2, 5):  # the same inode as the one it stands for: no disk, another model path
        same = (tmp_path / f"ft-{k % 2}" / "model.safetensors").stat()
        assert (tmp_path / f"ft-{k}" / "model.safetensors").stat().st_ino == same.st_ino
    assert live_pools.aliases(tmp_path, 2, 5) == paths  # again: kept as they are
