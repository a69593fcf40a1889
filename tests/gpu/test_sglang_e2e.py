"""On a GPU host: `chimera-orch up --engine sglang` with two stock SGLang servers (tiny Llama and
the Llama-3.2-1B shape, dummy weights) colocated on GPU 0, driven through the proxy with the
official openai client; Ctrl-C must leave no process and give the GPU memory back.

Extra SGLang flags for the host come from CHIMERA_SGLANG_ARGS (on the lent H100:
`--attention-backend triton --sampling-backend pytorch --grammar-backend none`).
Results go to $CHIMERA_GPU_OUT/e2e.json when set."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chimera_proc import Running, alive, start_chimera

pytestmark = pytest.mark.gpu

PLACEMENTS = {
    "models": [
        {"name": "tiny", "model_path": "tiny-llama", "load_format": "dummy",
         "placements": [{"gpus": [0], "on": True, "kv_pool_gb": 2}]},
        {"name": "llama-1b", "model_path": "meta-llama/Llama-3.2-1B-Instruct", "aliases": ["small"],
         "load_format": "dummy", "placements": [{"gpus": [0], "on": True, "kv_pool_gb": 8}]},
    ],
}
RESULTS: dict[str, object] = {}


def gpu_used_mib() -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used) >> 20
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture(scope="module")
def chimera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    RESULTS["gpu_used_mib_before"] = gpu_used_mib()
    t0 = time.monotonic()
    run = start_chimera(tmp_path_factory.mktemp("gpu-e2e"), PLACEMENTS, "sglang",
                        awake=["tiny", "llama-1b"], timeout_s=540)
    RESULTS["boot_both_s"] = round(time.monotonic() - t0, 1)
    RESULTS["gpu_used_mib_awake"] = gpu_used_mib()
    yield run
    run.stop()
    out = os.environ.get("CHIMERA_GPU_OUT")
    if out:
        Path(out, "e2e.json").write_text(json.dumps(RESULTS, indent=1))
        for f in run.run_dir.glob("*.log"):
            Path(out, f"engine-{f.name}").write_bytes(f.read_bytes()[-200_000:])
        Path(out, "chimera.log").write_bytes(run.log.read_bytes()[-200_000:])


@pytest.mark.parametrize("model", ["tiny", "small"])
def test_openai_client_chat_completion_and_stream(chimera: Running, model: str) -> None:
    client = openai.OpenAI(base_url=f"{chimera.base}/v1", api_key="unused")
    t = time.monotonic()
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello world"}], max_tokens=8)
    RESULTS[f"{model}_chat_s"] = round(time.monotonic() - t, 3)
    assert chat.choices[0].message.content is not None
    assert chat.usage and chat.usage.completion_tokens > 0
    comp = client.completions.create(model=model, prompt="once upon a time", max_tokens=8,
                                     extra_body={"ignore_eos": True})
    assert comp.usage and comp.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8,
        stream=True, extra_body={"ignore_eos": True}))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    RESULTS[f"{model}_answer"] = chat.choices[0].message.content


def test_metrics_through_the_proxy(chimera: Running) -> None:
    import httpx

    text = httpx.get(f"{chimera.base}/metrics", timeout=10).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = [s for s in fams["chimera_requests"].samples if s.name == "chimera_requests_total"]
    assert {s.labels["model"] for s in reqs} >= {"tiny", "llama-1b"}


def test_zz_ctrl_c_leaves_no_process_and_frees_the_gpu(chimera: Running) -> None:
    pids = chimera.engine_pids()
    assert pids
    t = time.monotonic()
    chimera.proc.send_signal(signal.SIGINT)
    assert chimera.proc.wait(timeout=120) == 0
    RESULTS["shutdown_s"] = round(time.monotonic() - t, 1)
    time.sleep(2)
    assert alive(pids) == []
    used = gpu_used_mib()
    RESULTS["gpu_used_mib_after"] = used
    assert used <= int(RESULTS["gpu_used_mib_before"]) + 256  # type: ignore[call-overload]
