"""chimera across a Ray cluster, on this CPU host: a local three-node cluster
(``ray.cluster_utils.Cluster``, each node declaring GPUs and a custom resource that names it),
``chimera-orch up --ray ADDRESS`` on the sim engine, models placed on the three nodes and
served through the proxy with the official openai client; then a node is removed under light
load and its model serves again from another node. Runs in CI (ray is in the test extra):
never skipped. Ray is started small (one CPU per node, 80 MiB object stores): the host's cores
are shared."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator.supervisor.statefile import STATE_NAME, read_state, same_process
from tests.chimera_proc import Running, start_chimera

pytestmark = pytest.mark.slow

NODES = {"node-a": 1, "node-b": 1, "node-c": 2}  # name (a custom resource) -> GPUs
PLACEMENTS: dict[str, Any] = {
    "host": {"gpu_memory_gb": 80, "host_memory_gb": 64},
    "models": [
        {"name": "alpha", "model_path": "tiny-llama", "placements": [{"node": "node-a", "gpus": [0]}]},
        {"name": "beta", "model_path": "tiny-llama", "placements": [{"node": "node-b", "gpus": [0]}]},
        # no node: the scheduler puts it on the node whose GPU 1 exists (node-c)
        {"name": "gamma", "model_path": "tiny-llama", "placements": [{"gpus": [1]}]},
    ],
}
OBJECT_STORE = 80 * 2**20


@dataclass
class Deployed:
    cluster: Cluster
    nodes: dict[str, Any]
    run: Running
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    names = list(NODES)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "num_gpus": NODES[names[0]],
            "resources": {names[0]: 1},
            "object_store_memory": OBJECT_STORE,
            "include_dashboard": False,
        },
    )
    nodes = {names[0]: cluster.head_node}
    for n in names[1:]:
        nodes[n] = cluster.add_node(num_cpus=1, num_gpus=NODES[n], resources={n: 1}, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    try:
        run = start_chimera(
            tmp_path_factory.mktemp("ray"),
            PLACEMENTS,
            "sim",
            awake=["alpha", "beta", "gamma"],
            timeout_s=90,
            env={"CHIMERA_SIM_SPEED": "0.02"},
            args=("--ray", cluster.address),
        )
    except BaseException:
        cluster.shutdown()
        raise
    d = Deployed(cluster, nodes, run)
    yield d
    d.run.stop()  # the last `up` (a test may replace the first one)
    cluster.shutdown()
    # A removed node's engines stand for processes that died with their machine; on this one
    # host they outlive it (engines outlive their agent, for re-adoption): stop what the nodes'
    # state files still list.
    for f in Path(run.run_dir).glob(f"*/{STATE_NAME}"):
        state = read_state(f)
        for rec in state.engines if state is not None else ():
            if same_process(rec) is None:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(rec.pid).kill()


def _metric(base: str, name: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        m = re.match(rf'{name}\{{node="([^"]+)"\}} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_models_on_three_nodes_serve_through_the_proxy(deployed: Deployed) -> None:
    run = deployed.run
    client = openai.OpenAI(base_url=f"{run.base}/v1", api_key="none", timeout=30)
    for model in ("alpha", "beta", "gamma"):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].message.content, model
    # each engine's log is in its node's run folder: the agents of three nodes started them
    logs = {p.parent.name: p.name for p in Path(run.run_dir).glob("*/*.log")}
    assert {"node-a", "node-b", "node-c"} <= set(logs), logs
    assert logs["node-c"].startswith("gamma")
    assert _metric(run.base, "chimera_node_up") == {"node-a": 1.0, "node-b": 1.0, "node-c": 1.0}
    # mode full: the KV ledger reads each shim through its node's agent (a Unix socket there)
    deadline = time.monotonic() + 10
    while "chimera_kv_limit_bytes{" not in httpx.get(f"{run.base}/metrics", timeout=5).text:
        assert time.monotonic() < deadline, "no shim status came back through the agents"
        time.sleep(0.25)


def _engine_pid(run: Running, node: str, model: str) -> int:
    state = json.loads((Path(run.run_dir) / node / "engines.json").read_text())
    (rec,) = [e for e in state["engines"] if e["instance_id"].startswith(model + "@")]
    return int(rec["pid"])


def test_a_restarted_agent_re_adopts_its_engines(deployed: Deployed) -> None:
    run = deployed.run
    before = _engine_pid(run, "node-b", "beta")
    ray.init(address=deployed.cluster.address, namespace="chimera", log_to_driver=False)
    try:
        agent = ray.get_actor("chimera-agent-node-b")
        old = ray.get(agent.ping.remote())[1]
        ray.kill(agent, no_restart=False)  # the actor dies; Ray restarts it on its live node
        deadline = time.monotonic() + 60
        while True:
            try:
                new = ray.get(agent.ping.remote(), timeout=5)[1]
                if new != old:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            assert time.monotonic() < deadline, "the agent was not restarted"
            time.sleep(0.25)
    finally:
        ray.shutdown()
    # the driver sees the new agent and it takes back beta's engine: same process, still serving
    deadline = time.monotonic() + 30
    while "re-adopted engine" not in "".join(p.read_text() for p in Path(run.run_dir).glob("node-b/*.log")):
        if "re-adopting" in run.log.read_text() or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    r = httpx.post(f"{run.base}/v1/completions", json={"model": "beta", "prompt": "x", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200, r.text
    assert psutil.pid_exists(before) and _engine_pid(run, "node-b", "beta") == before
    assert run.states()["beta"] == "awake"
    assert _metric(run.base, "chimera_node_up")["node-b"] == 1.0
    assert "re-adopting ['beta@gpu1']" in run.log.read_text(), run.log.read_text()[-3000:]


def _engines(run_dir: Path) -> dict[str, int]:
    """Instance id -> engine pid, from every node's state file of the run folder."""
    out = {}
    for f in run_dir.glob(f"*/{STATE_NAME}"):
        state = read_state(f)
        out.update({r.instance_id: r.pid for r in (state.engines if state is not None else ())})
    return out


def _sim_engines(run_dir: Path) -> set[int]:
    """Every live sim engine process of this run folder, whoever started it."""
    out = set()
    for p in psutil.process_iter(["cmdline", "status"]):
        argv = p.info["cmdline"] or []
        if p.info["status"] != psutil.STATUS_ZOMBIE and "simsglang" in argv and any(str(run_dir) in a for a in argv):
            out.add(p.pid)
    return out


def _up_again(deployed: Deployed, placements: dict[str, Any]) -> Running:
    """kill -9 of the running `up` (its engines stay), then a new `up --ray` on the same run
    folder; back once every model is awake."""
    old = deployed.run
    old.proc.kill()
    old.proc.wait()
    deployed.run = start_chimera(
        old.run_dir.parent,
        placements,
        "sim",
        awake=["alpha", "beta", "gamma"],
        timeout_s=90,
        env={"CHIMERA_SIM_SPEED": "0.02"},
        args=("--ray", deployed.cluster.address),
    )
    return deployed.run


def _serve_all(run: Running) -> None:
    for model in ("alpha", "beta", "gamma"):
        r = httpx.post(f"{run.base}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 4}, timeout=30)
        assert r.status_code == 200, (model, r.text)


def test_a_new_up_re_adopts_the_previous_run_s_engines(deployed: Deployed) -> None:
    run_dir = deployed.run.run_dir
    before = _engines(run_dir)
    assert set(before) == {"alpha@gpu0", "beta@gpu1", "gamma@gpu3"}, before
    # the control plane dies; a new `up` with the same placements takes every engine back:
    # same pids, still serving, none started or left over
    run = _up_again(deployed, PLACEMENTS)
    _serve_all(run)
    assert _engines(run_dir) == before
    assert _sim_engines(run_dir) == set(before.values())
    assert "previous run's engines to re-adopt: ['alpha@gpu0']" in run.log.read_text(), run.log.read_text()[-3000:]
    # again, with alpha and beta swapped between node-a and node-b: their engines match nothing
    # now (other instances) and are stopped; their replacements start; gamma is adopted
    swapped = {**PLACEMENTS, "models": [dict(m) for m in PLACEMENTS["models"]]}
    swapped["models"][0]["placements"] = [{"node": "node-b", "gpus": [0]}]
    swapped["models"][1]["placements"] = [{"node": "node-a", "gpus": [0]}]
    run = _up_again(deployed, swapped)
    _serve_all(run)
    after = _engines(run_dir)
    assert set(after) == {"alpha@gpu1", "beta@gpu0", "gamma@gpu3"}, after
    assert after["gamma@gpu3"] == before["gamma@gpu3"]
    assert not {before["alpha@gpu0"], before["beta@gpu1"]} & set(after.values())
    assert _sim_engines(run_dir) == set(after.values())  # the old ones are gone, none duplicated


def _join(deployed: Deployed, name: str, gpus: int) -> None:
    """A node joins after `up`: chimera starts its agent and counts it (chimera_node_up 1)."""
    deployed.nodes[name] = deployed.cluster.add_node(
        num_cpus=1, num_gpus=gpus, resources={name: 1}, object_store_memory=OBJECT_STORE
    )
    deadline = time.monotonic() + 60
    while _metric(deployed.run.base, "chimera_node_up").get(name) != 1.0:
        assert time.monotonic() < deadline, "the joined node was not counted"
        time.sleep(0.5)


def test_a_removed_node_s_model_serves_again_on_a_node_that_joined(deployed: Deployed) -> None:
    run = deployed.run
    _join(deployed, "node-d", 1)  # after `up`: its GPU is cluster id 4 (node-a 0, node-b 1, node-c 2-3)
    stop = threading.Event()
    outcomes: dict[str, list[int]] = {"alpha": [], "beta": [], "gamma": []}

    def load(model: str) -> None:
        while not stop.is_set():
            try:
                r = httpx.post(
                    f"{run.base}/v1/completions",
                    json={"model": model, "prompt": "x", "max_tokens": 4},
                    timeout=60,
                )
                outcomes[model].append(r.status_code)
            except httpx.HTTPError:
                outcomes[model].append(-1)
            time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(m,), daemon=True) for m in outcomes]
    for t in threads:
        t.start()
    time.sleep(1.0)
    deployed.cluster.remove_node(deployed.nodes["node-c"])
    t0 = time.monotonic()
    deadline = t0 + 45
    while time.monotonic() < deadline:
        if _metric(run.base, "chimera_node_up").get("node-c") == 0.0 and outcomes["gamma"][-1:] == [200]:
            break
        time.sleep(0.25)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=70)
    assert _metric(run.base, "chimera_node_up")["node-c"] == 0.0
    # the other nodes' models never failed; gamma lost at most its in-flight requests, with an
    # envelope (never a hang), and serves again from another node
    assert set(outcomes["alpha"]) == {200} and set(outcomes["beta"]) == {200}, outcomes
    lost = [s for s in outcomes["gamma"] if s != 200]
    assert set(lost) <= {502, 503} and len(lost) <= 2, outcomes["gamma"]
    assert outcomes["gamma"][-1] == 200, outcomes["gamma"]
    states = run.states()
    assert states["gamma"] == "awake", states
    # the emptiest live node took it: node-d, which joined after `up` (node-a and node-b run a
    # model each), and it counts there (node-d's GPU, cluster id 4), not on node-c's 3
    relocated = {p.parent.name for p in Path(run.run_dir).glob("*/gamma*.log")}
    assert relocated == {"node-c", "node-d"}, relocated
    text = httpx.get(f"{run.base}/metrics", timeout=5).text
    gpu = re.findall(r'chimera_instance_state\{gpu="([^"]+)",model="gamma",server="gamma@gpu3",state="awake"\} 1', text)
    assert gpu == ["4"], gpu
