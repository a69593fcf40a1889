"""An instance moved off a dead node (up --ray) counts where it really runs: RayEffects posts
``Relocated`` before the start on the new node, and the control loop, the one owner of an
instance's GPUs, shows it there to the KV ledger, the scheduler, the dashboard and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cluster.effects import RayEffects
from orchestrator.cluster.nodes import inventory
from orchestrator.config import HostSpec, parse_config
from orchestrator.control.events import Event, Exited, Relocated, Started
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.control.scheduler import cluster_view
from orchestrator.dashboard.history import History
from orchestrator.dashboard.readings import Readings
from orchestrator.dashboard.state import build
from orchestrator.deployment import derive
from orchestrator.kv.wiring import kv_instances
from orchestrator.metrics import ChimeraMetrics
from orchestrator.types import InstanceState
from tests.unit.control_fakes import RecordingEffects, ep, settle
from tests.unit.test_cluster_placing import ray_node

S = InstanceState
INV = inventory([ray_node("aa" * 14, 1, "node-a", "10.0.0.1"), ray_node("bb" * 14, 2, "node-b", "10.0.0.2")])
CFG = parse_config(
    {
        "mode": "elastic",
        "host": {"gpus": 3},
        "models": [
            {"name": "a", "model_path": "tiny-llama", "placements": [{"gpus": [0], "node": "node-a"}]},
            {"name": "b", "model_path": "tiny-llama", "placements": [{"gpus": [1], "node": "node-b"}]},
        ],
    },
    gpu_count=3,
)


@pytest.fixture
async def loop() -> AsyncIterator[tuple[ControlLoop, RecordingEffects]]:
    fx = RecordingEffects()
    ctl = ControlLoop(derive(CFG), fx, clock=lambda: 0.0)
    task = asyncio.create_task(ctl.run())
    await settle()
    yield ctl, fx
    await cancel_and_wait(task)


async def test_a_relocated_instance_counts_on_its_new_gpus_everywhere(
    loop: tuple[ControlLoop, RecordingEffects],
) -> None:
    ctl, fx = loop
    dep = ctl.deployment
    ctl.post(Relocated("a@gpu0", (2,)))
    ctl.post(Started("a@gpu0", ep("a@gpu0")))
    await settle()
    view = next(v for v in ctl.instances() if v.id == "a@gpu0")
    assert view.gpus == (2,) and view.state is S.AWAKE
    assert ("a@gpu0", S.STARTING) in fx.changes
    # the KV ledger: on GPU 2 now, nothing left on the dead node's GPU 0
    assert {(k.id, k.gpu) for k in kv_instances(ctl.instances(), dep) if k.id == "a@gpu0"} == {("a@gpu0", 2)}
    # the scheduler's snapshot
    servers = cluster_view(dep, ctl._instances.values(), {}, {}, ctl.demand(), 0.0).servers
    assert next(s for s in servers if s.id == "a@gpu0").gpus == (2,)
    # the dashboard's GPU bars
    gpus = {g["gpu"]: [p[0] for p in g["parts"]] for g in build(ctl.models(), dep, Readings(), History(), 0.0)["gpus"]}
    assert "a@gpu0" not in gpus.get(0, []) and "a@gpu0" in gpus[2]
    # moving back to its placement's GPUs clears the override
    ctl.post(Relocated("a@gpu0", (0,)))
    await settle()
    assert next(v for v in ctl.instances() if v.id == "a@gpu0").gpus == (0,)


def test_metrics_drop_the_old_gpu_series_of_a_moved_instance() -> None:
    m = ChimeraMetrics()
    m.set_instance_state("a", "a@gpu0", (0,), "awake")
    m.set_instance_state("a", "a@gpu0", (2,), "starting")
    text = m.render()[0].decode()
    assert 'server="a@gpu0",state="starting"} 1.0' in text
    assert 'gpu="0",model="a",server="a@gpu0"' not in text
    assert 'gpu="2",model="a",server="a@gpu0"' in text


class FakeAgent:
    """A node agent's methods as Ray handles them (``.remote`` gives an awaitable)."""

    def __init__(self, calls: list[tuple[str, str, tuple[int, ...]]], node: str) -> None:
        self.start = _Method(calls, node, "start")
        self.kill = _Method(calls, node, "kill")


class _Method:
    def __init__(self, calls: list[tuple[str, str, tuple[int, ...]]], node: str, name: str) -> None:
        self.calls, self.node, self.name = calls, node, name

    def remote(self, spec: Any, *args: Any) -> Any:
        self.calls.append((self.node, self.name, spec.gpus))
        return asyncio.sleep(0)


async def test_ray_effects_post_relocated_before_the_start_on_a_live_node(tmp_path: Path) -> None:
    posted: list[Event] = []
    calls: list[tuple[str, str, tuple[int, ...]]] = []
    agents = {n.name: FakeAgent(calls, n.name) for n in INV.nodes}
    fx = RayEffects(INV, "sim", HostSpec(), tmp_path, posted.append, agents=agents)
    spec = next(i for i in CFG.instances if i.id == "a@gpu0")
    fx.start(spec)
    await settle()
    assert posted == [] and calls == [("node-a", "start", (0,))]  # on its own node: no move
    fx._deliver(Started("a@gpu0", ep("a@gpu0")))
    fx.node_down("node-a", "gone")
    assert posted[-1] == Exited("a@gpu0", None)
    fx.start(spec)
    await settle()
    # node-b's GPU 0 is free (b runs on its GPU... none started here): cluster-wide id 1 or 2
    moved = posted[-1]
    assert isinstance(moved, Relocated) and moved.instance_id == "a@gpu0"
    assert calls[-1][0] == "node-b" and moved.gpus == (1 + calls[-1][2][0],)
