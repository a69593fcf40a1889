"""End to end: the two-level scheduler live, `chimera-orch up` on the sim engine (mode full).

A scripted trace on two 37 GB GPUs (an awake 8B server costs 18.1 GiB: perf/cost.py): GPU 0 holds
two awake 8B servers (hot, n1), so hot has little KV room there; GPU 1 holds parked servers of hot
and cold (warm start).
1. Traffic for hot: the scraper sees its tokens, the global scheduler migrates it to GPU 1
   (wake the target, move traffic when it is ready, park the source once drained) while the
   traffic goes on: no request fails, and both servers answered some of it.
2. A request for cold: GPU 1 has no room for it until hot's server there has been idle for its
   2 s threshold; then that server is parked to make room and cold wakes (the request is held).
3. cold (`idle.when: always`) parks once idle.
Asserts are on /admin states and /metrics counters, never on timings; waits are bounded polls.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chimera_proc import Running, start_chimera

pytestmark = pytest.mark.slow

KEY = "scheduler-e2e-key"
AUTH = {"authorization": f"Bearer {KEY}"}
PLACEMENTS = {
    "host": {"gpus": 2, "gpu_memory_gb": 37},
    "idle": {"park_after_s": 2},  # far below Prism's 45 s, to keep the test short
    "scheduler": {"tau": 0.3},
    "models": [
        {
            "name": "hot",
            "model_path": "llama-3.1-8b",
            "slo": {"ttft_s": 30.0},
            "placements": [{"gpus": [0], "on": True}, {"gpus": [1], "on": False}],
        },
        {"name": "n1", "model_path": "llama-3.1-8b", "placements": [{"gpus": [0], "on": True}]},
        {
            "name": "cold",
            "model_path": "llama-3.1-8b",
            "idle": {"when": "always", "park_after_s": 2},
            "placements": [{"gpus": [1], "on": False}],
        },
    ],
}


@pytest.fixture(scope="module")
def chimera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = start_chimera(
        tmp_path_factory.mktemp("sched"),
        PLACEMENTS,
        "sim",
        awake=["hot", "n1"],
        parked=("cold",),
        timeout_s=60,
        env={"CHIMERA_SIM_SPEED": "0.05", "CHIMERA_ADMIN_KEY": KEY},
    )
    yield run
    run.proc.send_signal(signal.SIGINT)
    run.proc.wait(timeout=60)
    run.stop()


def states(run: Running) -> dict[str, str]:
    r = httpx.get(f"{run.base}/admin/instances", headers=AUTH, timeout=10)
    return {i["id"]: i["state"] for i in r.json()["instances"]}


def wait_until(run: Running, what: str, ok: Callable[[dict[str, str]], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok(s := states(run)):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout_s} s: {s}\n{run.log.read_text()}")
        time.sleep(0.1)


def complete(run: Running, model: str) -> httpx.Response:
    return httpx.post(
        f"{run.base}/v1/completions",
        json={"model": model, "prompt": "hello " * 40, "max_tokens": 16, "ignore_eos": True},
        timeout=60,
    )


def parks(run: Running) -> Counter[tuple[str, str]]:
    text = httpx.get(f"{run.base}/metrics", timeout=10).text
    out: Counter[tuple[str, str]] = Counter()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "chimera_parks_total":
                out[s.labels["model"], s.labels["reason"]] += int(s.value)
    return out


def test_scheduler__migrates_parks_and_wakes_under_a_scripted_trace(chimera: Running) -> None:
    assert states(chimera) == {"hot@gpu0": "awake", "hot@gpu1": "parked", "n1@gpu0": "awake", "cold@gpu1": "parked"}
    assert parks(chimera)["hot", "migration"] == 0  # the start-up probes are not demand

    # 1. traffic for hot, from 4 clients, before, during and after its migration
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            r = complete(chimera, "hot")
            answers.append((r.status_code, r.headers.get("x-chimera-instance", "")))

    workers = [threading.Thread(target=client) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        wait_until(chimera, "migrated", lambda s: s["hot@gpu1"] == "awake" and s["hot@gpu0"] == "parked")
        served = len(answers)
        deadline = time.monotonic() + 20
        while len(answers) < served + 8 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    assert answers and all(code == 200 for code, _ in answers), Counter(answers)
    assert {inst for _, inst in answers} == {"hot@gpu0", "hot@gpu1"}  # traffic moved
    assert answers[-1][1] == "hot@gpu1"
    assert parks(chimera)["hot", "migration"] == 1

    # 2. cold needs hot's room on GPU 1: held until hot idles past 2 s, then hot parks
    r = complete(chimera, "cold")
    assert r.status_code == 200 and r.headers["x-chimera-instance"] == "cold@gpu1"
    assert states(chimera)["hot@gpu1"] == "parked"
    assert parks(chimera)["hot", "make_room"] == 1

    # 3. cold parks on its own once idle (`when: always`)
    wait_until(chimera, "cold parked", lambda s: s["cold@gpu1"] == "parked")
    got = parks(chimera)
    assert got["cold", "idle"] >= 1 and got["cold", "warm_start"] == 1
    assert got["n1", "make_room"] == 0 and states(chimera)["n1@gpu0"] == "awake"

    # no request was lost or refused: every proxied request was answered 200
    text = httpx.get(f"{chimera.base}/metrics", timeout=10).text
    statuses: Counter[str] = Counter()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "chimera_requests_total":
                statuses[s.labels["status"]] += int(s.value)
    assert set(statuses) == {"200"} and statuses["200"] == len(answers) + 1
