"""The nodes of a Ray cluster as chimera sees them: a name, the private address its engines bind
to, its GPUs, and the range of cluster-wide GPU ids its GPUs take.

Pure: built from the dicts ``ray.nodes()`` returns (tests build them by hand). A node is named
by the first custom resource it declares (``ray start --resources '{"gpu-a": 1}'``), else by its
address when no other node shares it, else by its Ray node id; a placement's ``node:`` may give
any of these. GPUs are numbered cluster-wide in node order (nodes sorted by name): the control
loop, the KV ledger and the scheduler see one host with every GPU of the cluster, and a GPU
group never spans two nodes.

A node that joins after ``up`` (``Inventory.grow``) takes the next cluster-wide GPU ids, after
every GPU known so far, whatever its name: the ids of the GPUs already counted never change. A
newcomer whose name is taken (a node that rejoins under its old custom resource) is a new node
named ``<name>-<first 6 hex of its Ray node id>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

# Resources Ray declares by itself: never a node's name.
_RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
_RAY_PREFIXES = ("node:", "accelerator_type:")


@dataclass(frozen=True)
class Node:
    name: str
    node_id: str  # Ray's hex node id (NodeAffinitySchedulingStrategy pins to it)
    address: str  # the node's private address: engines bind to it, the proxy reaches them there
    gpus: int
    first_gpu: int  # the cluster-wide id of its GPU 0
    host_memory_bytes: int  # Ray's `memory` resource: RAM left for tasks (parked weight backups)
    aliases: tuple[str, ...] = ()  # other names a placement may use

    @property
    def global_gpus(self) -> range:
        return range(self.first_gpu, self.first_gpu + self.gpus)

    def local(self, gpus: Sequence[int]) -> tuple[int, ...]:
        """Cluster-wide GPU ids of this node -> the node's own CUDA indices."""
        return tuple(g - self.first_gpu for g in gpus)


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[Node, ...]

    @property
    def gpu_count(self) -> int:
        return sum(n.gpus for n in self.nodes)

    def find(self, name: str) -> Node | None:
        for n in self.nodes:
            if name == n.name or name == n.node_id or name in n.aliases:
                return n
        return None

    def of_gpu(self, gpu: int) -> Node:
        for n in self.nodes:
            if gpu in n.global_gpus:
                return n
        raise KeyError(f"GPU {gpu} is on no node of the cluster")

    def gpu_node(self) -> tuple[int, ...]:
        """The index (in ``nodes``) of the node of each cluster-wide GPU id."""
        return tuple(i for i, n in enumerate(self.nodes) for _ in range(n.gpus))

    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def grow(self, ray_nodes: Sequence[Mapping[str, Any]]) -> tuple[Inventory, tuple[Node, ...]]:
        """This inventory plus the live nodes of ``ray.nodes()`` it does not hold yet (by Ray
        node id), and those newcomers; numbered after every GPU known (module docstring)."""
        known = {n.node_id for n in self.nodes}
        fresh = [n for n in ray_nodes if str(n.get("NodeID")) not in known]
        if not any(n.get("Alive", n.get("alive", False)) for n in fresh):
            return self, ()
        # names and addresses in use: a newcomer on a known host is named by its node id
        taken = {name for n in self.nodes for name in (n.name, n.address, *n.aliases)}
        first = self.gpu_count
        added: list[Node] = []
        for n in inventory(fresh).nodes:
            name = n.name if n.name not in taken else f"{n.name}-{n.node_id[:6]}"
            aliases = tuple(a for a in n.aliases if a not in taken)
            added.append(replace(n, name=name, aliases=aliases, first_gpu=first))
            taken.update((name, *aliases))
            first += n.gpus
        return Inventory(self.nodes + tuple(added)), tuple(added)


def custom_resources(resources: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in resources if k not in _RAY_RESOURCES and not k.startswith(_RAY_PREFIXES))


def inventory(ray_nodes: Sequence[Mapping[str, Any]]) -> Inventory:
    """The live nodes of ``ray.nodes()``, named and numbered (see the module's docstring)."""
    alive = [n for n in ray_nodes if n.get("Alive", n.get("alive", False))]
    addresses = [str(n.get("NodeManagerAddress", "")) for n in alive]
    named: list[tuple[str, Mapping[str, Any], tuple[str, ...]]] = []
    for n, addr in zip(alive, addresses, strict=True):
        custom = custom_resources(n.get("Resources", {}))
        unique_addr = addresses.count(addr) == 1
        if custom:
            name, aliases = custom[0], tuple(custom[1:]) + ((addr,) if unique_addr else ())
        elif unique_addr:
            name, aliases = addr, ()
        else:
            name, aliases = str(n["NodeID"])[:12], ()
        named.append((name, n, aliases))
    out, first = [], 0
    for name, n, aliases in sorted(named, key=lambda t: t[0]):
        res = n.get("Resources", {})
        gpus = int(res.get("GPU", 0))
        out.append(
            Node(
                name=name,
                node_id=str(n["NodeID"]),
                address=str(n.get("NodeManagerAddress", "127.0.0.1")),
                gpus=gpus,
                first_gpu=first,
                host_memory_bytes=int(res.get("memory", 0)),
                aliases=aliases,
            )
        )
        first += gpus
    return Inventory(tuple(out))
