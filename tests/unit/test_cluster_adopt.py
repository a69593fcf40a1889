"""A new ``up --ray`` re-adopts the engines a previous run left on the nodes: it finds the
previous run folder (one state file per node), and each node agent sorts its node's engines
against the instances this deployment places on that node, with the node's own GPU indices
(what the engines' command lines carry), before the control loop starts anything."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cluster.agent import NodeAgent
from orchestrator.cluster.effects import RayEffects
from orchestrator.config import HostSpec, InstanceSpec
from orchestrator.deployment import derive
from orchestrator.supervisor import adoption
from orchestrator.supervisor.statefile import (
    STATE_NAME,
    EngineRecord,
    EngineState,
    find_previous_run,
    read_state,
    run_key,
    write_state,
)
from tests.unit.test_cluster_relocation import CFG, INV


def _record(iid: str, argv: tuple[str, ...], pid: int, config_file: str | None = None) -> EngineRecord:
    return EngineRecord(
        iid, pid, 0.0, 4000 + pid, 5000 + pid, argv, "http://10.0.0.2:1", iid, "x.log", 0.0, config_file
    )


def _write(run: Path, node: str, key: str, *recs: EngineRecord) -> Path:
    (run / node).mkdir(parents=True, exist_ok=True)
    write_state(run / node / STATE_NAME, EngineState(key, recs))
    return run / node / STATE_NAME


def test_the_previous_run_is_the_own_folder_else_the_newest_with_a_node_state_file(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    old, new, mine = root / "1", root / "2", root / "3"
    now = time.time()
    os.utime(_write(old, "node-a", "k-old", _record("a@gpu0", ("x",), 1)), (now - 60, now - 60))
    os.utime(_write(new, "node-b", "k-new", _record("b@gpu1", ("x",), 2)), (now - 30, now - 30))
    _write(new, "node-a", "k-new")  # newest, but lists no engine: no key read from it
    mine.mkdir(parents=True)
    assert find_previous_run(mine, root) == new
    assert run_key(new) == "k-new"
    assert find_previous_run(mine, None) is None  # --run-dir given: only its own folder counts
    _write(mine, "node-c", "k-mine", _record("c@gpu3", ("x",), 3))
    assert find_previous_run(mine, root) == mine
    assert run_key(tmp_path / "nowhere") is None
    # a local run's state file (<run>/engines.json) is no cluster run's
    (tmp_path / "local" / "r").mkdir(parents=True)
    write_state(tmp_path / "local" / "r" / STATE_NAME, EngineState("k", ()))
    assert find_previous_run(tmp_path / "x", tmp_path / "local") is None


class _Remote:
    """A real NodeAgent's method as Ray hands it to the driver (``.remote`` gives an awaitable)."""

    def __init__(self, agent: NodeAgent, name: str) -> None:
        self.agent, self.name = agent, name

    def remote(self, *args: Any) -> Any:
        return getattr(self.agent, self.name)(*args)


class _Handle:
    def __init__(self, agent: NodeAgent) -> None:
        self.adopt_previous = _Remote(agent, "adopt_previous")


async def test_each_agent_adopts_its_node_s_engines_by_their_node_local_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped: list[str] = []

    class Stopped:
        def __init__(self, rec: EngineRecord) -> None:
            self.rec = rec

        async def stop(self) -> None:
            stopped.append(self.rec.instance_id)

    verified: list[tuple[set[int], tuple[int, ...]]] = []

    async def released(probe: Any, pids: set[int], gpus: tuple[int, ...]) -> None:
        verified.append((pids, gpus))

    monkeypatch.setattr(adoption, "same_process", lambda rec: None)  # every recorded pid lives
    monkeypatch.setattr(adoption, "_process", Stopped)
    monkeypatch.setattr(adoption, "group_pids", lambda pid: {pid})
    monkeypatch.setattr(adoption, "verify_released", released)
    dep = derive(CFG)
    run, prev = tmp_path / "run", tmp_path / "prev"
    agents = {n.name: NodeAgent(n.name, "sim", CFG.host, str(run / n.name), dep, n.address, key="k") for n in INV.nodes}
    try:
        b = dep.instances["b@gpu1"].spec  # cluster GPU 1 = node-b's GPU 0
        local_b = dataclasses.replace(b, placement=dataclasses.replace(b.placement, gpus=(0,)))
        sup = agents["node-b"].supervisor
        config = str(sup.auth.config_file) if sup.auth is not None else None

        async def argv(spec: InstanceSpec) -> tuple[str, ...]:
            return (await sup.launch(spec, 4007, 5007, sup.shim_for(spec, 4007), config)).argv

        as_started = await argv(local_b)
        assert as_started != await argv(b)  # --base-gpu-id: the cluster-wide spec would never match
        _write(
            prev,
            "node-b",
            "k",
            _record("b@gpu1", as_started, 7, config),
            _record("gone@gpu2", ("python", "-m", "simsglang"), 8),  # not in the placements file
        )
        # b, moved to node-a by the previous run (its node was dead then): stopped there
        _write(prev, "node-a", "k", _record("b@gpu1", as_started, 9, config))
        handles: dict[str, Any] = {name: _Handle(a) for name, a in agents.items()}
        fx = RayEffects(INV, "sim", HostSpec(), run, lambda ev: None, deployment=dep, key="k", agents=handles)
        await fx.adopt_previous(prev)

        assert sorted(stopped) == ["b@gpu1", "gone@gpu2"]  # node-a's b, node-b's stranger
        # each stopped engine's memory is verified released on the GPUs its command line names
        assert sorted(verified, key=lambda v: min(v[0])) == [({8}, ()), ({9}, (0,))]
        assert agents["node-b"].supervisor.adoption.adoptable() == ["b@gpu1"]
        assert agents["node-a"].supervisor.adoption.adoptable() == []
        # this run owns them now: the previous run's node files are gone, each node has its own
        assert not list(prev.glob(f"*/{STATE_NAME}"))
        assert read_state(run / "node-b" / STATE_NAME) is not None
        # the start of b on node-b takes the waiting engine (then adopted after its probes)
        rec = agents["node-b"].supervisor.adoption.take("b@gpu1")
        assert rec is not None and rec.pid == 7
    finally:
        for a in agents.values():
            await a.supervisor.stop_all()


def test_the_gpus_of_a_recorded_command_line() -> None:
    assert adoption._argv_gpus(("python", "--tp-size", "2", "--base-gpu-id", "3")) == (3, 4)
    assert adoption._argv_gpus(("sglang", "--base-gpu-id", "1")) == (1,)
    assert adoption._argv_gpus(("python", "-m", "simsglang")) == ()


def test_a_stock_engines_gpus_are_its_visible_devices_not_its_base_gpu_id() -> None:
    """A stock SGLang engine runs with --base-gpu-id 0 on the GPUs of its CUDA_VISIBLE_DEVICES:
    its memory is checked there once it is stopped."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}
    code = "import time; print('up', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # exec'd: its own environment
        assert adoption._visible_gpus(proc.pid) == (3, 5)
    finally:
        proc.kill()
        proc.wait()
    assert adoption._visible_gpus(proc.pid) == ()  # gone
