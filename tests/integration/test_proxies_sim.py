"""``chimera-orch up --proxies 3`` on the sim engine: three proxy processes on one port
(SO_REUSEPORT). Requests on fresh connections (spread over the processes by the kernel) for a
model parked at up all wake it through the control loop and pass its admission gate (mode full)
and are served; /v1/models answers from every process, the admin API, the dashboard and
/metrics (every process's requests) from every process as from the primary; the workers leave
with chimera."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.dataplane.remote import VIEWS_S
from tests.chimera_proc import alive, start_chimera

pytestmark = pytest.mark.slow
KEY = "proxies-admin-key"

PLACEMENTS = {
    "mode": "full",
    "host": {"gpus": 2, "gpu_memory_gb": 80},
    "models": [
        {"name": "a", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]},
        {"name": "b", "model_path": "tiny-llama", "placements": [{"gpus": [1], "on": False}]},
    ],
}


def b_state(base: str) -> str:
    with httpx.Client(timeout=5) as c:
        return str({m["id"]: m["state"] for m in c.get(f"{base}/v1/models").json()["data"]}["b"])


def requests_of_b(base: str) -> tuple[float, bool]:
    """chimera_requests_total for model b over every process, and whether a worker's samples
    (labelled proxy) were among them."""
    with httpx.Client(timeout=5) as c:
        text = c.get(f"{base}/metrics").text
    total, workers = 0.0, False
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "chimera_requests_total" and s.labels.get("model") == "b":
                total += s.value
                workers = workers or "proxy" in s.labels
    return total, workers


def dashboard_requests_of_b(base: str) -> int:
    with httpx.Client(timeout=5) as c:
        models = c.get(f"{base}/dashboard/state").json()["models"]
    return int(next(m for m in models if m["name"] == "b")["requests"])


def listens(p: psutil.Process, port: int) -> bool:
    return any(c.laddr.port == port and c.status == "LISTEN" for c in p.net_connections("tcp"))


def test_three_proxy_processes_share_the_port_and_the_control_loop(tmp_path: Path) -> None:
    run = start_chimera(
        tmp_path,
        PLACEMENTS,
        "sim",
        awake=["a"],
        parked=("b",),
        timeout_s=90,
        env={"CHIMERA_SIM_SPEED": "0.02", "CHIMERA_ADMIN_KEY": KEY},
        args=("--proxies", "3"),
    )
    try:
        workers = [
            p
            for p in psutil.Process(run.proc.pid).children()
            if "orchestrator.dataplane.worker" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2, [p.cmdline() for p in psutil.Process(run.proc.pid).children()]
        assert all("--admission" in w.cmdline() for w in workers)  # mode full: the control plane's gate
        port = int(run.base.rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while not all(listens(w, port) for w in workers):  # each listens on the same port, once imported
            assert time.monotonic() < deadline, [w.net_connections("tcp") for w in workers]
            time.sleep(0.1)

        def one(i: int) -> int:
            with httpx.Client(timeout=60) as c:  # a fresh connection: any of the three processes
                r = c.post(f"{run.base}/v1/completions", json={"model": "b", "prompt": f"x{i}", "max_tokens": 4})
                return r.status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(one, range(24)))
        assert codes == [200] * 24
        # every process shows b awake once its views are refreshed (the workers' every VIEWS_S)
        deadline = time.monotonic() + 5 * VIEWS_S
        while True:
            states = [b_state(run.base) for _ in range(6)]  # fresh connections: any of the three
            if states == ["awake"] * 6:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.2)
        # the primary's own routes from any process: admin API, dashboard, /metrics (with every
        # process's requests in it, the workers' labelled proxy="N")
        for _ in range(9):
            with httpx.Client(timeout=10) as c:
                admin = c.get(f"{run.base}/admin/instances", headers={"authorization": f"Bearer {KEY}"})
                assert admin.status_code == 200 and {i["id"] for i in admin.json()["instances"]} >= {"b@gpu1"}
                assert c.get(f"{run.base}/admin/instances").status_code == 401  # still the primary's check
                page = c.get(f"{run.base}/")
                assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        deadline = time.monotonic() + 5 * VIEWS_S
        while True:
            counts = [requests_of_b(run.base) for _ in range(6)]  # fresh connections: any of the three
            shown = [dashboard_requests_of_b(run.base) for _ in range(6)]  # the page, too
            if counts == [(24.0, True)] * 6 and shown == [24] * 6:
                break
            assert time.monotonic() < deadline, (counts, shown)
            time.sleep(0.2)
        pids = {w.pid for w in workers}
    finally:
        run.stop()
    assert alive(pids) == []
    assert (run.run_dir / "proxy-1.log").exists() and (run.run_dir / "proxy-2.log").exists()


def test_a_run_folder_too_long_for_unix_sockets_puts_them_in_a_private_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("a" * 60) / ("b" * 50)  # <run folder>/control.sock would pass 107 bytes
    deep.mkdir(parents=True)
    run = start_chimera(deep, PLACEMENTS, "sim", awake=["a"], parked=("b",), timeout_s=90, args=("--proxies", "2"))
    try:
        (worker,) = [
            p
            for p in psutil.Process(run.proc.pid).children()
            if "orchestrator.dataplane.worker" in " ".join(p.cmdline())
        ]
        (flag,) = [a for a in worker.cmdline() if a.startswith("--socket-dir=")]
        socket_dir = Path(flag.split("=", 1)[1])
        assert not str(socket_dir).startswith(str(deep)) and (socket_dir / "primary.sock").exists()
        port = int(run.base.rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while not listens(worker, port):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for i in range(8):  # fresh connections: either process
            with httpx.Client(timeout=60) as c:
                r = c.post(f"{run.base}/v1/completions", json={"model": "a", "prompt": f"x{i}", "max_tokens": 4})
                assert r.status_code == 200, r.text
                assert c.get(f"{run.base}/dashboard/state").status_code == 200
    finally:
        run.stop()
    assert not socket_dir.exists()  # removed with the run
    assert "Traceback" not in run.log.read_text()
