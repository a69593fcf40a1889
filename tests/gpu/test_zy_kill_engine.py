"""`kill -9` of a stock SGLang server under load (before the suite's shutdown test): every
client gets an answer (a result or an error, never a hang), the neighbour on the same GPU keeps
serving, chimera restarts the server and serves it again, and the dead server's GPU memory
comes back (no scheduler process lingers)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest

from tests.chimera_proc import Running, alive
from tests.gpu.conftest import RESULTS, gpu_used_mib

pytestmark = pytest.mark.gpu

CLIENTS = 4
REQUEST_BOUND_S = 90.0  # no request may take longer than this, whatever happens to its engine


def _engine(run: Running, instance: str) -> int:
    engines = json.loads((run.run_dir / "engines.json").read_text())["engines"]
    (pid,) = [e["pid"] for e in engines if e["instance_id"] == instance]
    return int(pid)


def _load(base: str, model: str, stop: threading.Event, outcomes: list[tuple[float, str]]) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=REQUEST_BOUND_S)
    while not stop.is_set():
        t = time.monotonic()
        try:
            list(
                client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "count to a hundred"}],
                    max_tokens=64,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
            )
            kind = "ok"
        except openai.APIStatusError as exc:
            kind = f"http {exc.status_code}"
        except openai.APIError as exc:  # no connection, or an error event that ends a stream
            kind = type(exc).__name__
        outcomes.append((time.monotonic() - t, kind))
        if kind != "ok":
            time.sleep(0.2)


def test_kill_9_of_a_server_under_load_is_restarted_and_its_neighbour_serves_on(chimera_gpu: Running) -> None:
    base = chimera_gpu.base
    pid = _engine(chimera_gpu, "tiny@gpu0")
    group = {p for p in chimera_gpu.engine_pids() if _same_group(p, pid)}
    used_before = gpu_used_mib()
    stop = threading.Event()
    tiny: list[tuple[float, str]] = []
    neighbour: list[tuple[float, str]] = []
    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        jobs = [pool.submit(_load, base, "tiny", stop, tiny) for _ in range(CLIENTS)]
        jobs.append(pool.submit(_load, base, "llama-1b", stop, neighbour))
        time.sleep(5)
        assert any(kind == "ok" for _, kind in tiny), tiny
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        restored = None
        while time.monotonic() - killed < 240:
            time.sleep(1)
            if not psutil.pid_exists(pid) and chimera_gpu.states().get("tiny") == "awake":
                n = len(tiny)
                time.sleep(3)
                if any(kind == "ok" for _, kind in tiny[n:]):
                    restored = time.monotonic() - killed
                    break
        stop.set()
        for job in jobs:
            job.result(timeout=REQUEST_BOUND_S + 30)
    failures = [kind for _, kind in tiny if kind != "ok"]
    used_after = gpu_used_mib()
    RESULTS["kill9"] = {
        "served_again_s": None if restored is None else round(restored, 1),
        "tiny_requests": len(tiny),
        "tiny_failed": len(failures),
        "tiny_failure_kinds": sorted(set(failures)),
        "neighbour_requests": len(neighbour),
        "neighbour_failed": sum(kind != "ok" for _, kind in neighbour),
        "longest_request_s": round(max(d for d, _ in tiny + neighbour), 1),
        "gpu_used_mib_before_kill": used_before,
        "gpu_used_mib_after_restart": used_after,
    }
    print("kill -9 under load:", RESULTS["kill9"])
    assert restored is not None, chimera_gpu.log.read_text()[-5000:]
    assert alive(group) == []  # the whole dead server is gone: schedulers and detokenizer too
    assert all(kind == "ok" for _, kind in neighbour), neighbour
    assert max(d for d, _ in tiny + neighbour) < REQUEST_BOUND_S
    body = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'chimera_restarts_total{model="tiny",reason="crash",server="tiny@gpu0"} 1.0' in body
    assert used_after <= used_before + 1024  # the restarted server holds what the dead one held


def _same_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False
