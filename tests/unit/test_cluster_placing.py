"""Nodes of a Ray cluster and placements on them (orchestrator/cluster/nodes.py, placing.py):
pure, from hand-built ``ray.nodes()`` dicts."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.cluster.nodes import inventory
from orchestrator.cluster.placing import globalize, relocate
from orchestrator.config import parse_config
from orchestrator.errors import ConfigError


def ray_node(node_id: str, gpus: int, name: str | None = None, addr: str = "10.0.0.1", alive: bool = True) -> Any:
    res: dict[str, float] = {"CPU": 8.0, "GPU": float(gpus), "memory": 64 * 2**30, f"node:{addr}": 1.0}
    if name:
        res[name] = 1.0
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": addr, "Resources": res}


INV = inventory(
    [
        ray_node("cc" * 14, 2, "node-c", "10.0.0.3"),
        ray_node("aa" * 14, 1, "node-a", "10.0.0.1"),
        ray_node("bb" * 14, 1, None, "10.0.0.2"),
        ray_node("dd" * 14, 4, "node-d", "10.0.0.4", alive=False),
    ]
)


def test_nodes_are_named_numbered_in_name_order_and_dead_ones_left_out() -> None:
    assert [(n.name, n.gpus, n.first_gpu) for n in INV.nodes] == [
        ("10.0.0.2", 1, 0),  # no custom resource, a unique address: named by it
        ("node-a", 1, 1),
        ("node-c", 2, 2),
    ]
    assert INV.gpu_count == 4
    assert INV.gpu_node() == (0, 1, 2, 2)  # the scheduler's node of each GPU (a move's cost)
    assert INV.of_gpu(3).name == "node-c" and INV.of_gpu(3).local([3]) == (1,)
    assert INV.find("10.0.0.3") is INV.nodes[2]  # an address is an alias when it is unique
    assert INV.find("aa" * 14) is INV.nodes[1]


def test_shared_address_falls_back_to_the_node_id() -> None:
    inv = inventory([ray_node("ab" * 14, 1, addr="127.0.0.1"), ray_node("cd" * 14, 1, addr="127.0.0.1")])
    assert sorted(n.name for n in inv.nodes) == ["ab" * 6, "cd" * 6]


def model(name: str, *placements: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "model_path": "llama-3.1-8b", "placements": list(placements)}


def test_globalize_maps_node_local_gpus_and_fills_unnamed_placements_around_named_ones() -> None:
    raw = {
        "models": [
            model("free", {"gpus": [0]}),
            model("pinned", {"node": "node-c", "gpus": [1]}, {"node": "node-a", "gpus": [0]}),
        ]
    }
    out = globalize(raw, INV)
    assert raw["models"][0]["placements"][0] == {"gpus": [0]}  # the input is left alone
    pinned = out["models"][1]["placements"]
    assert pinned == [{"node": "node-c", "gpus": [3]}, {"node": "node-a", "gpus": [1]}]
    # GPU 0 of node-a is taken by a named placement: the unnamed one goes to the first empty GPU 0
    assert out["models"][0]["placements"][0] == {"gpus": [0], "node": "10.0.0.2"}
    cfg = parse_config(out, gpu_count=INV.gpu_count)
    assert {i.id: (i.placement.node, i.gpus) for i in cfg.instances} == {
        "free@gpu0": ("10.0.0.2", (0,)),
        "pinned@gpu3": ("node-c", (3,)),
        "pinned@gpu1": ("node-a", (1,)),
    }


def test_globalize_keeps_a_tp_group_on_one_node() -> None:
    raw = {"models": [{**model("tp2", {"gpus": [0, 1]}), "tp_size": 2}]}
    assert globalize(raw, INV)["models"][0]["placements"][0] == {"gpus": [2, 3], "node": "node-c"}


def test_globalize_reports_unknown_nodes_and_missing_gpus_with_their_paths() -> None:
    raw = {"models": [model("x", {"node": "node-z", "gpus": [0]}, {"node": "node-a", "gpus": [1]}, {"gpus": [7]})]}
    with pytest.raises(ConfigError) as exc:
        globalize(raw, INV, source="p.yaml")
    text = "\n".join(exc.value.problems)
    assert "p.yaml: models[0].placements[0].node: no node 'node-z'" in text
    assert "models[0].placements[1].gpus: node node-a has 1 GPU(s)" in text
    assert "models[0].placements[2].gpus: no node of the Ray cluster has GPU 7" in text


def test_relocate_picks_the_emptiest_live_node_with_enough_gpus() -> None:
    a, c = INV.nodes[1], INV.nodes[2]
    node, gpus = relocate(1, [a, c], {"node-a": [(0,)], "node-c": [(0,)]}) or (None, ())
    assert node is c and gpus == (1,)  # node-c: 1 instance on 2 GPUs; its free GPU
    assert relocate(2, [a], {}) is None
    node, gpus = relocate(2, [a, c], {}) or (None, ())
    assert node is c and gpus == (0, 1)


def test_a_node_field_is_a_non_empty_string() -> None:
    with pytest.raises(ConfigError, match=r"placements\[0\].node: must be the name of a node"):
        parse_config({"models": [model("x", {"node": 3, "gpus": [0]})]})
