"""Placements on the nodes of a Ray cluster. Pure.

``globalize`` reads the placements file's plain data before validation: a placement's ``gpus``
are the GPU ids of one node (a GPU group lies within one node); ``node:`` names that node, or,
left out, the node is chosen here: among the nodes that have those GPUs, the one whose GPUs
carry the fewest bytes of weights that start awake so far (named placements count first), ties
to the node with fewer instances, then by name. The ids are then rewritten to the cluster-wide
ids of ``nodes.Inventory`` and ``node`` set to the node's name, so the usual validation (one
instance per group, weights per GPU) runs on what will really run where.

``relocate`` chooses where an instance of a dead node starts again: a cross-node move is a cold
start whichever node takes it (perf/cost.py), so the choice is by room: the live node with the
fewest instances per GPU that has enough GPUs, and on it the GPUs fewest instances use.

``by_node`` gives each node its placed instances as its agent sees them (the node's own GPU
indices): what a new ``up``'s agents compare the previous run's command lines with.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orchestrator.cluster.nodes import Inventory, Node
from orchestrator.config import InstanceSpec
from orchestrator.errors import ConfigError
from orchestrator.shapes import ShapeError, resolve_shape


def globalize(raw: Any, inv: Inventory, source: str = "<memory>") -> Any:
    """``raw`` with every placement's ``gpus`` made cluster-wide and ``node`` set. Problems it
    can see (an unknown node, a GPU the node lacks, no node with the GPUs) raise ConfigError
    with their field paths; anything else is left for ``parse_config`` to report."""
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        return raw
    out = copy.deepcopy(raw)
    problems: list[str] = []
    load: dict[tuple[str, int], float] = {}  # (node, local GPU) -> weight bytes awake at start
    count: dict[str, int] = {}
    todo: list[tuple[str, dict[str, Any], tuple[int, ...], float]] = []
    for i, m in enumerate(out["models"]):
        if not isinstance(m, dict) or not isinstance(m.get("placements"), list):
            continue
        weight = _weight_per_gpu(m)
        for j, pl in enumerate(m["placements"]):
            gpus = _gpus(pl)
            if gpus is None:
                continue  # parse_config says why
            todo.append((f"models[{i}].placements[{j}]", pl, gpus, weight if pl.get("on", True) is not False else 0.0))
    # named placements first, so the unnamed fill around them
    for path, pl, gpus, weight in sorted(todo, key=lambda t: t[1].get("node") is None):
        name = pl.get("node")
        if name is not None:
            node = inv.find(name) if isinstance(name, str) else None
            if node is None:
                problems.append(f"{path}.node: no node {name!r} in the Ray cluster (nodes: {', '.join(inv.names())})")
                continue
            if max(gpus) >= node.gpus:
                problems.append(f"{path}.gpus: node {node.name} has {node.gpus} GPU(s) (ids 0-{node.gpus - 1})")
                continue
        else:
            fits = [n for n in inv.nodes if max(gpus) < n.gpus]
            if not fits:
                most = max((n.gpus for n in inv.nodes), default=0)
                problems.append(f"{path}.gpus: no node of the Ray cluster has GPU {max(gpus)} (at most {most} GPUs)")
                continue
            node = min(fits, key=lambda n: (max(load.get((n.name, g), 0.0) for g in gpus), count.get(n.name, 0)))
        for g in gpus:
            load[(node.name, g)] = load.get((node.name, g), 0.0) + weight
        count[node.name] = count.get(node.name, 0) + 1
        pl["gpus"] = [node.first_gpu + g for g in gpus]
        pl["node"] = node.name
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    out.setdefault("host", {})
    if isinstance(out["host"], dict):
        out["host"]["gpus"] = max(inv.gpu_count, 1)
    return out


def relocate(
    gpus_needed: int, nodes: Sequence[Node], placed: Mapping[str, Sequence[tuple[int, ...]]]
) -> tuple[Node, tuple[int, ...]] | None:
    """A live node and a group of its local GPUs for an instance moved off a dead node; None
    when no live node has ``gpus_needed`` GPUs. ``placed``: node name -> the local GPU groups
    of the instances that run there now."""
    fits = [n for n in nodes if n.gpus >= gpus_needed]
    if not fits:
        return None

    def per_gpu(n: Node) -> float:
        return len(placed.get(n.name, ())) / n.gpus

    node = min(fits, key=lambda n: (per_gpu(n), n.name))
    use = dict.fromkeys(range(node.gpus), 0)
    for group in placed.get(node.name, ()):
        for g in group:
            if g in use:
                use[g] += 1
    chosen = sorted(use, key=lambda g: (use[g], g))[:gpus_needed]
    return node, tuple(sorted(chosen))


def _gpus(pl: Any) -> tuple[int, ...] | None:
    if not isinstance(pl, dict):
        return None
    g = pl.get("gpus")
    if isinstance(g, int) and not isinstance(g, bool):
        g = [g]
    if (
        not isinstance(g, list)
        or not g
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in g)
    ):
        return None
    return tuple(g)


def _weight_per_gpu(m: Mapping[str, Any]) -> float:
    path, shape = m.get("model_path"), m.get("shape")
    tp = m.get("tp_size", 1)
    if not isinstance(path, str) or not isinstance(tp, int) or tp < 1:
        return 0.0
    try:
        return resolve_shape(path, shape if isinstance(shape, str) else None).weight_bytes / tp
    except ShapeError:
        return 0.0


def localized(spec: InstanceSpec, gpus: tuple[int, ...]) -> InstanceSpec:
    """``spec`` as its node's agent runs it: on ``gpus``, the node's own GPU indices."""
    return dataclasses.replace(spec, placement=dataclasses.replace(spec.placement, gpus=gpus))


def by_node(specs: Iterable[InstanceSpec], inv: Inventory) -> dict[str, dict[str, InstanceSpec]]:
    """Node name -> {instance id: its spec with the node's own GPU indices}, for the instances
    placed on each node (cluster-wide GPU ids in ``specs``); every node of ``inv`` is a key."""
    out: dict[str, dict[str, InstanceSpec]] = {n.name: {} for n in inv.nodes}
    for spec in specs:
        node = inv.of_gpu(spec.gpus[0])
        out[node.name][spec.id] = localized(spec, node.local(spec.gpus))
    return out
