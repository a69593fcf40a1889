"""End to end on the sim engine: SIGSTOP of an engine's process group (a hang: the process
lives, answers nothing) while `chimera-orch up` runs; the scraper sees it stale, the probe
fails, chimera kills and restarts it: the official openai client's request in flight gets a
clean error, and the next one is served within the liveness window + probe + backoff + boot.
The restart shows in /metrics as reason hung."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.chimera_proc import Running, start_chimera

pytestmark = pytest.mark.slow

PLACEMENTS = {
    "mode": "static",
    "host": {"gpus": 1, "gpu_memory_gb": 80},
    "restart": {"backoff_s": 0.5, "max_backoff_s": 2},
    "liveness": {"window_s": 1, "probe_timeout_s": 0.5},
    "models": [{"name": "tiny", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}],
}


@pytest.fixture
def chimera(tmp_path: Path) -> Iterator[Running]:
    run = start_chimera(tmp_path, PLACEMENTS, "sim", awake=["tiny"], timeout_s=60, env={"CHIMERA_SIM_SPEED": "0.02"})
    yield run
    run.stop()


def test_a_stopped_engine_is_detected_killed_and_restarted(chimera: Running) -> None:
    client = openai.OpenAI(base_url=f"{chimera.base}/v1", api_key="none", max_retries=0, timeout=30)
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert client.chat.completions.create(**ask).choices[0].message.content  # type: ignore[call-overload]
    old = chimera.engine_pid()
    os.killpg(os.getpgid(old), signal.SIGSTOP)
    t0 = time.monotonic()
    # in flight on the hung engine: a clean error once it is killed, not a wait for ever
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert err.value.status_code == 502 and "tiny@gpu0" in err.value.message
    failed_after_s = time.monotonic() - t0
    # the next one is held while the killed instance restarts
    again = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    served_after_s = time.monotonic() - t0
    assert again.choices[0].message.content
    # window 1 s + a scrape timeout 1 s + probe 0.5 s + backoff 0.5 s + boot ~1 s, with slack
    assert served_after_s < 12, served_after_s
    assert chimera.engine_pid() != old and not psutil.pid_exists(old)
    assert chimera.states()["tiny"] == "awake"
    body = httpx.get(f"{chimera.base}/metrics", timeout=5).text
    assert 'chimera_restarts_total{model="tiny",reason="hung",server="tiny@gpu0"} 1.0' in body
    print(f"in flight: clean error after {failed_after_s:.2f} s; served again {served_after_s:.2f} s after SIGSTOP")


def test_a_pause_sent_around_chimera_is_refused_and_one_with_the_key_is_repaired(chimera: Running) -> None:
    """Out-of-band state changes: without chimera's key an engine refuses them; with it (someone
    who read the run folder), the pause is detected by the /health check and the engine
    restarted, so a request through the proxy ends instead of waiting for ever."""
    client = openai.OpenAI(base_url=f"{chimera.base}/v1", api_key="none", max_retries=2, timeout=30)
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    old = chimera.engine_pid()
    argv = psutil.Process(old).cmdline()
    url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    assert httpx.post(f"{url}/pause_generation", json={}, timeout=5).status_code == 401
    key = (chimera.run_dir / "engine-auth.yaml").read_text().split('"')[1]
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{url}/pause_generation", json={}, headers=auth, timeout=5).status_code == 200
    t0 = time.monotonic()
    answer = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    served_after_s = time.monotonic() - t0
    assert answer.choices[0].message.content
    # /health every 2 s + window 1 s + probe + backoff 0.5 s + boot, with slack
    assert served_after_s < 15, served_after_s
    assert chimera.engine_pid() != old
    body = httpx.get(f"{chimera.base}/metrics", timeout=5).text
    assert 'chimera_restarts_total{model="tiny",reason="hung",server="tiny@gpu0"} 1.0' in body
    print(f"out-of-band pause: served again {served_after_s:.2f} s after it")
