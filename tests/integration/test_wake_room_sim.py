"""End to end: the wake gate live, `chimera-orch up` on the sim engine (mode full).

One 40 GB GPU: an awake 8B (a) and a 1B placed `on: false` (b, parked by the warm start). The
cost model lets b wake beside a without parking anyone, but the KV ledger has granted a the
rest of the GPU, so a's shim may map it: b's wake must wait until the ledger has shrunk a
(the plan executor asks the ledger's room; the runner tells the loop as soon as it frees).
Asserts on the log, /metrics and /admin states, never on timings; waits are bounded polls.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chimera_proc import Running, start_chimera

pytestmark = pytest.mark.slow

KEY = "wake-room-key"
AUTH = {"authorization": f"Bearer {KEY}"}
PLACEMENTS = {
    "mode": "full",
    "host": {"gpus": 1, "gpu_memory_gb": 40},
    "models": [
        {"name": "a", "model_path": "llama-3.1-8b", "placements": [{"gpus": [0], "on": True}]},
        {"name": "b", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0], "on": False}]},
    ],
}


@pytest.fixture(scope="module")
def chimera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = start_chimera(
        tmp_path_factory.mktemp("wake-room"),
        PLACEMENTS,
        "sim",
        awake=["a"],
        parked=("b",),
        timeout_s=60,
        env={"CHIMERA_SIM_SPEED": "0.05", "CHIMERA_ADMIN_KEY": KEY},
    )
    yield run
    run.proc.send_signal(signal.SIGINT)
    run.proc.wait(timeout=60)
    run.stop()


def metric(run: Running, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(f"{run.base}/metrics", timeout=10).text
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


def kv_limits(run: Running) -> dict[str, float]:
    return {dict(k)["server"]: v for k, v in metric(run, "chimera_kv_limit_bytes").items()}


def test_wake_room__a_wake_waits_for_the_neighbours_limit_to_shrink_then_serves(chimera: Running) -> None:
    # the ledger grants the awake server the GPU's rest once it has split it, in steps (a grow is
    # phased): wait until its limit is above 12 GiB and has not moved over two of the ledger's
    # rounds (1 s each), so that ``before`` is the grant and not a step on its way
    deadline = time.monotonic() + 30
    seen: tuple[float, float] | None = None  # (limit, since)
    while True:
        before = kv_limits(chimera)
        limit = before.get("a@gpu0", 0)
        assert time.monotonic() < deadline, (before, chimera.log.read_text())
        if seen is None or seen[0] != limit:
            seen = (limit, time.monotonic())
        elif limit > 12 * 2**30 and time.monotonic() - seen[1] >= 2.5:
            break
        time.sleep(0.2)
    r = httpx.post(
        f"{chimera.base}/v1/completions",
        json={"model": "b", "prompt": "hello " * 40, "max_tokens": 8, "ignore_eos": True},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["x-chimera-instance"] == "b@gpu0"
    log = " ".join(chimera.log.read_text().split())  # the console wraps long lines
    assert "b@gpu0: wake waits for" in log and "neighbours hold a@gpu0" in log, log
    assert "b@gpu0: room for its wake after" in log, log
    waits = metric(chimera, "chimera_wake_room_wait_seconds_count")
    assert waits == {(("model", "b"), ("outcome", "fit")): 1.0}, waits
    after = kv_limits(chimera)
    assert after["a@gpu0"] < before["a@gpu0"]  # the neighbour gave the weights their room
    states = {
        i["id"]: i["state"]
        for i in httpx.get(f"{chimera.base}/admin/instances", headers=AUTH, timeout=10).json()["instances"]
    }
    assert states == {"a@gpu0": "awake", "b@gpu0": "awake"}  # nobody was parked for it
