"""One chimera run for the whole GPU suite (each SGLang boot costs a minute or more): three
stock SGLang servers on GPU 0 with dummy weights — the tiny Llama and the Llama-3.2-1B shape
awake, the Llama-3.1-8B shape `on: false` (started, warmed, parked: its first, slow park is
paid at start). Results and logs go to $CHIMERA_GPU_OUT when set. ``CHIMERA_GPU_SHARING=mps``
runs the same suite with ``host.gpu_sharing: mps`` (every server under the MPS daemon chimera
starts; test_mps.py checks that they are)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chimera_proc import Running, start_chimera

ADMIN_KEY = "gpu-suite"
PLACEMENTS = {
    "mode": "full",
    "models": [
        {
            "name": "tiny",
            "model_path": "tiny-llama",
            "load_format": "dummy",
            "placements": [{"gpus": [0], "on": True, "kv_pool_gb": 2}],
        },
        {
            "name": "llama-1b",
            "model_path": "meta-llama/Llama-3.2-1B-Instruct",
            "aliases": ["small"],
            "load_format": "dummy",
            "placements": [{"gpus": [0], "on": True, "kv_pool_gb": 8}],
        },
        {
            "name": "llama-8b",
            "model_path": "meta-llama/Llama-3.1-8B-Instruct",
            "load_format": "dummy",
            "placements": [{"gpus": [0], "on": False, "kv_pool_gb": 16}],
        },
    ],
}
GPU_SHARING = os.environ.get("CHIMERA_GPU_SHARING", "timeslice")
PLACEMENTS["host"] = {"gpu_sharing": GPU_SHARING}
RESULTS: dict[str, object] = {"gpu_sharing": GPU_SHARING}


def gpu_used_mib() -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used) >> 20
    finally:
        pynvml.nvmlShutdown()


def out_dir() -> Path | None:
    out = os.environ.get("CHIMERA_GPU_OUT")
    return Path(out) if out else None


@pytest.fixture(scope="session")
def chimera_gpu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    RESULTS["gpu_used_mib_before"] = gpu_used_mib()
    t0 = time.monotonic()
    run = start_chimera(
        tmp_path_factory.mktemp("gpu"),
        PLACEMENTS,
        "sglang",
        awake=["tiny", "llama-1b"],
        parked=("llama-8b",),
        timeout_s=560,
        env={"CHIMERA_ADMIN_KEY": ADMIN_KEY},
    )
    RESULTS["up_to_all_settled_s"] = round(time.monotonic() - t0, 1)
    RESULTS["gpu_used_mib_settled"] = gpu_used_mib()
    yield run
    run.stop()
    out = out_dir()
    if out:
        (out / "results.json").write_text(json.dumps(RESULTS, indent=1))
        # one file for every engine's log tail: the device returns at most 8 files
        with open(out / "engines.log", "wb") as engines:
            for f in sorted(run.run_dir.glob("*.log")):
                engines.write(f"===== {f.name} =====\n".encode() + f.read_bytes()[-150_000:])
        (out / "chimera.log").write_bytes(run.log.read_bytes()[-200_000:])
