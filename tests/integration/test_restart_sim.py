"""End to end on the sim engine: `kill -9` of an engine while `chimera-orch up` runs; the
control loop restarts it after its backoff and the official openai client is served again
within seconds. Restarts show in /metrics."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.chimera_proc import Running, start_chimera

pytestmark = pytest.mark.slow

PLACEMENTS = {
    "mode": "static",
    "host": {"gpus": 1, "gpu_memory_gb": 80},
    "restart": {"backoff_s": 0.5, "max_backoff_s": 2},
    "models": [{"name": "tiny", "model_path": "tiny-llama", "placements": [{"gpus": [0], "on": True}]}],
}


@pytest.fixture
def chimera(tmp_path: Path) -> Iterator[Running]:
    run = start_chimera(tmp_path, PLACEMENTS, "sim", awake=["tiny"], timeout_s=60, env={"CHIMERA_SIM_SPEED": "0.02"})
    yield run
    run.stop()


def test_kill_9_of_an_engine_is_restarted_and_serves_again(chimera: Running) -> None:
    client = openai.OpenAI(base_url=f"{chimera.base}/v1", api_key="none", max_retries=3, timeout=30)
    first = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert first.choices[0].message.content
    old = chimera.engine_pid()
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    again = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    served_after_s = time.monotonic() - t0
    assert again.choices[0].message.content
    assert served_after_s < 15, served_after_s
    assert chimera.engine_pid() != old
    assert chimera.states()["tiny"] == "awake"
    body = httpx.get(f"{chimera.base}/metrics", timeout=5).text
    assert 'chimera_restarts_total{model="tiny",reason="crash",server="tiny@gpu0"} 1.0' in body
    print(f"served again {served_after_s:.2f} s after kill -9")
