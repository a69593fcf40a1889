"""A node that joins the Ray cluster after ``up``: it takes the next cluster-wide GPU ids
(``Inventory.grow``), the control loop counts its GPUs (``GpusJoined``: the scheduler's snapshot,
the KV ledger's capacity) and an instance moved off a dead node may start there; nothing placed
on a live node moves."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orchestrator.cluster.effects import RayEffects
from orchestrator.config import HostSpec
from orchestrator.control.events import Event, Exited, GpusJoined, Relocated, Started
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.control.scheduler import cluster_view
from orchestrator.deployment import derive
from orchestrator.kv.wiring import GpuCapacity
from tests.unit.control_fakes import RecordingEffects, ep, settle
from tests.unit.test_cluster_placing import ray_node
from tests.unit.test_cluster_relocation import CFG, INV, FakeAgent


def test_a_joining_node_is_numbered_after_every_known_gpu_whatever_its_name() -> None:
    table = [ray_node("aa" * 14, 1, "node-a", "10.0.0.1"), ray_node("bb" * 14, 2, "node-b", "10.0.0.2")]
    assert INV.grow(table) == (INV, ())  # nobody new
    # "node-0" sorts first by name, yet the GPUs counted keep their ids: it takes 3 and 4
    grown, added = INV.grow([*table, ray_node("cc" * 14, 2, "node-0", "10.0.0.3")])
    assert [(n.name, list(n.global_gpus)) for n in grown.nodes] == [
        ("node-a", [0]),
        ("node-b", [1, 2]),
        ("node-0", [3, 4]),
    ]
    assert [n.name for n in added] == ["node-0"] and grown.gpu_node() == (0, 1, 1, 2, 2)
    # a node that rejoins under a name in use is a new node, named by its Ray node id too;
    # dead nodes in the table are left out
    grown, added = INV.grow(
        [*table, ray_node("dd" * 14, 1, "node-a", "10.0.0.9"), ray_node("ee" * 14, 1, "x", alive=False)]
    )
    assert [(n.name, n.first_gpu) for n in added] == [("node-a-dddddd", 3)]
    assert grown.find("node-a") is not None and grown.find("node-a").node_id == "aa" * 14  # type: ignore[union-attr]


class JoinAgent(FakeAgent):
    def __init__(self, calls: list[tuple[str, str, tuple[int, ...]]], node: str) -> None:
        super().__init__(calls, node)
        self.reports = _Reports()


class _Reports:
    async def _wait(self) -> tuple[int, list[Any]]:
        await asyncio.sleep(3600)
        return 1, []

    def remote(self, wait_s: float) -> Any:
        return self._wait()


async def test_a_joined_node_counts_and_takes_a_dead_node_s_instance(tmp_path: Path) -> None:
    posted: list[Event] = []
    calls: list[tuple[str, str, tuple[int, ...]]] = []
    agents: dict[str, Any] = {n.name: JoinAgent(calls, n.name) for n in INV.nodes}
    node_state: list[tuple[str, bool]] = []
    fx = RayEffects(
        INV,
        "sim",
        HostSpec(),
        tmp_path,
        posted.append,
        agents=agents,
        node_state=lambda n, up: node_state.append((n, up)),
    )
    b = next(i for i in CFG.instances if i.id == "b@gpu1")
    fx.start(b)
    fx._deliver(Started("b@gpu1", ep("b@gpu1")))
    _, (new,) = INV.grow([ray_node("ff" * 14, 2, "node-z", "10.0.0.5")])
    fx.join(new, JoinAgent(calls, "node-z"))
    try:
        assert posted[-1] == GpusJoined((0, 1, 1, 2, 2)) and node_state[-1] == ("node-z", True)
        fx.start(b)  # restarted on its own live node: it stays there
        assert calls[-1] == ("node-b", "start", (0,))
        a = next(i for i in CFG.instances if i.id == "a@gpu0")
        fx.start(a)
        fx._deliver(Started("a@gpu0", ep("a@gpu0")))
        fx.node_down("node-a", "gone")
        assert posted[-1] == Exited("a@gpu0", None)
        fx.start(a)  # node-z runs nothing: the emptiest live node
        await settle()
        assert posted[-1] == Relocated("a@gpu0", (3,)) and calls[-1] == ("node-z", "start", (0,))
    finally:
        for t in fx._pumps:
            t.cancel()
        await asyncio.gather(*fx._pumps, return_exceptions=True)


async def test_the_loop_counts_the_joined_gpus_for_the_scheduler_and_the_kv_ledger() -> None:
    ctl = ControlLoop(derive(CFG, gpu_node=INV.gpu_node()), RecordingEffects(), clock=lambda: 0.0)
    capacity = GpuCapacity(7, lambda: max(CFG.gpu_count, len(ctl.gpu_node)))
    task = asyncio.create_task(ctl.run())
    try:
        await settle()
        assert len(capacity) == 3 and capacity.get(3) is None
        ctl.post(GpusJoined((0, 1, 1, 2, 2)))
        ctl.post(Relocated("a@gpu0", (4,)))
        await settle()
        view = cluster_view(ctl.deployment, ctl._instances.values(), {}, {}, ctl.demand(), 0.0, ctl.gpu_node)
        assert len(view.gpu_bytes) == 5 and view.node_of(4) == 2
        assert next(s for s in view.servers if s.id == "a@gpu0").gpus == (4,)
        assert capacity.get(4) == 7 and list(capacity) == [0, 1, 2, 3, 4]
    finally:
        await cancel_and_wait(task)
