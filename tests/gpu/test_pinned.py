"""A shape pool with ``stage: pinned`` on stock SGLang (docs/pools.md): one tiny-Llama pool server
switched between two real checkpoints (safetensors written here, distinct seeds), pushed from the
pinned holder's buffers over CUDA IPC (``/update_weights_from_tensor``, flattened buckets) once
they are staged; every answer is its own model's; with the holder killed, the next switch loads
from disk and the one after is pushed again (a new holder, staged anew). Its own chimera beside
the suite's (mode static, small pools: the tiny model needs ~1 GB)."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from bench.gpu.checkpoints import main as write_checkpoints
from bench.gpu.pools import ask as ask_at
from bench.gpu.pools import last_phases, staged_bytes
from tests.chimera_proc import Running, start_chimera

pytestmark = pytest.mark.gpu


def ask(run: Running, model: str) -> str:
    return ask_at(run.base, model)[1]  # greedy: the model's own answer, every time


def gone(proc: psutil.Process, timeout_s: float) -> None:
    """Waits for a killed process that is not this one's child: dead once it is a zombie (chimera, its
    parent, reaps it when it next looks) or reaped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"holder {proc.pid} still alive {timeout_s} s after SIGKILL")


def test_a_pinned_pool_pushes_its_staged_checkpoints_and_survives_its_holder(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    assert write_checkpoints(["--shape", "tiny-llama", "--count", "2", "--out", str(ck)]) == 0
    size = sum(f.stat().st_size for d in ("ft-0", "ft-1") for f in (ck / d).glob("*.safetensors"))
    placements = {
        "mode": "static",
        "models": [{"name": f"m{i}", "model_path": str(ck / f"ft-{i}"), "pool": "p"} for i in range(2)],
        "pools": [{"name": "p", "servers": [{"gpus": [0], "kv_pool_gb": 1}], "stage": "pinned", "stage_gb": 1}],
    }
    run = start_chimera(tmp_path, placements, "sglang", awake=["m0"], timeout_s=400)
    try:
        first = {"m0": ask(run, "m0"), "m1": ask(run, "m1")}  # m1: from disk, nothing staged yet
        assert first["m0"] != first["m1"], "distinct checkpoints answer alike: a wrong swap would not show"
        deadline = time.monotonic() + 120
        while staged_bytes(run.base) < size and time.monotonic() < deadline:  # both asked: both staged
            time.sleep(1)
        assert staged_bytes(run.base) >= size
        for model in ("m0", "m1", "m0"):
            assert ask(run, model) == first[model]
            assert "push_s" in last_phases(run.log), last_phases(run.log)  # from pinned RAM, not disk
        holders = psutil.process_iter(["cmdline"])
        (holder,) = [p for p in holders if "orchestrator.pools.pinned.holder" in (p.info["cmdline"] or [])]
        holder.kill()
        gone(holder, 10)
        assert ask(run, "m1") == first["m1"]  # the dead holder: from disk, the request served
        assert "update_weights_s" in last_phases(run.log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the next requests stage it again in a new holder
            assert ask(run, "m0") == first["m0"]
            if "push_s" in last_phases(run.log):
                break
            ask(run, "m1")
            time.sleep(1)
        assert "push_s" in last_phases(run.log)
    finally:
        run.stop()
