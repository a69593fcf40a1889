"""A wake that fails with CUDA out-of-memory (before the suite's kill and shutdown tests):
another process takes the GPU's free memory, a request comes for the parked 8B, and its wake
cannot get the memory back. The request must end with an answer or a clean error envelope
within its bound (never a hang or a cut connection), the awake neighbour serves on, chimera
counts the failure and restarts the instance, and once the memory is given back the 8B serves
again."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.chimera_proc import Running
from tests.gpu.conftest import RESULTS, gpu_used_mib

pytestmark = pytest.mark.gpu

REQUEST_BOUND_S = 300.0  # the held request's whole life: a wake, a failed wake, a restart
# Takes every free GiB of GPU 0 in 1-GiB tensors (until the allocator refuses), says so, and
# holds them until its stdin closes.
HOG = """
import sys, torch
held = []
while True:
    try:
        held.append(torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0"))
    except torch.OutOfMemoryError:
        break
print(len(held), flush=True)
sys.stdin.read()
"""


def _restarts(base: str) -> dict[str, float]:
    """llama-8b's restarts by reason: a wake that fails is `wake_failed` when SGLang answers the
    resume with an error, `crash` when its scheduler dies of it."""
    body = httpx.get(f"{base}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in body.splitlines():
        m = re.match(r'chimera_restarts_total\{model="llama-8b",reason="(\w+)",server="llama-8b@gpu0"\} (\S+)', line)
        if m:
            out[m[1]] = float(m[2])
    return out


def _ask(base: str, model: str, timeout_s: float) -> str:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=timeout_s)
    try:
        client.completions.create(model=model, prompt="The capital of France is", max_tokens=8)
        return "ok"
    except openai.APIStatusError as exc:  # a clean error: an HTTP status with chimera's envelope
        body = exc.body if isinstance(exc.body, dict) else {}
        return f"http {exc.status_code}" if "message" in body else f"http {exc.status_code} without an envelope"
    except openai.APIError as exc:
        return type(exc).__name__  # a timeout or a cut connection: what must not happen


def test_a_wake_that_runs_out_of_gpu_memory_ends_cleanly_and_the_model_serves_again(chimera_gpu: Running) -> None:
    base = chimera_gpu.base
    if chimera_gpu.states().get("llama-8b") != "parked":
        httpx.post(
            f"{base}/admin/instances/llama-8b@gpu0/park",
            headers={"Authorization": "Bearer gpu-suite"},
            timeout=120,
        )
    assert chimera_gpu.states().get("llama-8b") == "parked"
    failed_before = sum(_restarts(base).values())
    free_before = gpu_used_mib()
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None
        hogged_gib = int(hog.stdout.readline() or 0)
        assert hogged_gib > 0, "the hog took no memory"
        outcome: list[tuple[float, str]] = []

        def ask_8b() -> None:
            t = time.monotonic()
            kind = _ask(base, "llama-8b", REQUEST_BOUND_S)
            outcome.append((time.monotonic() - t, kind))

        asker = threading.Thread(target=ask_8b)
        asker.start()
        deadline = time.monotonic() + 120
        while sum(_restarts(base).values()) <= failed_before and time.monotonic() < deadline:
            time.sleep(0.5)
        restarts = _restarts(base)
        wake_failed = sum(restarts.values()) > failed_before
        neighbour = _ask(base, "tiny", 60)  # the awake neighbour, while the GPU is full
    finally:
        if hog.stdin is not None:
            hog.stdin.close()  # the memory comes back
        hog.wait(timeout=60)
    released = time.monotonic()
    asker.join(timeout=REQUEST_BOUND_S + 30)
    served_again = None
    while time.monotonic() - released < 300:
        if _ask(base, "llama-8b", 120) == "ok":
            served_again = time.monotonic() - released
            break
        time.sleep(2)
    RESULTS["wake_oom"] = {
        "hogged_gib": hogged_gib,
        "gpu_used_mib_before": free_before,
        "restarts_by_reason": restarts,
        "held_request": outcome,
        "neighbour_while_full": neighbour,
        "served_again_s_after_release": None if served_again is None else round(served_again, 1),
    }
    print("wake with the GPU full:", RESULTS["wake_oom"])
    assert wake_failed, chimera_gpu.log.read_text()[-5000:]
    assert not asker.is_alive(), "the held request never ended"
    ((took, kind),) = outcome
    assert kind == "ok" or (kind.startswith("http ") and "without" not in kind), kind
    assert took < REQUEST_BOUND_S
    assert neighbour == "ok"
    assert served_again is not None, chimera_gpu.log.read_text()[-5000:]
