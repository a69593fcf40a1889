"""Joining a Ray cluster (``up --ray auto|ADDRESS``) and reading its nodes. The one place, with
effects.py, that imports Ray, lazily: a CPU install without the ``ray`` extra imports this
module and gets a ConfigError (exit code 2) only when ``--ray`` is asked for."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orchestrator
from orchestrator.cluster.nodes import Inventory, inventory
from orchestrator.errors import ConfigError

log = logging.getLogger("chimera.cluster")
RAY_EXTRA = "pip install 'chimera[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            [f"--ray needs Ray Core, which is not installed here ({exc}); install it: {RAY_EXTRA}"]
        ) from exc
    return ray


def code_root() -> str:
    """The folder that holds this very ``orchestrator`` package: the agents import it from
    there (a node of a cluster where chimera is pip-installed finds it anyway)."""
    return str(Path(orchestrator.__file__).resolve().parent.parent)


def connect(address: str) -> Inventory:
    """Join the cluster at ``address`` (``auto``: the one this host belongs to, as
    ``ray.init(address="auto")`` finds it) and return its live nodes."""
    ray = import_ray()
    root = code_root()
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    try:
        ray.init(
            address=address,
            namespace="chimera",
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError([f"--ray {address}: cannot join the Ray cluster: {exc}"]) from exc
    inv = inventory(ray.nodes())
    if not inv.nodes:
        raise ConfigError([f"--ray {address}: the cluster has no live node"])
    for n in inv.nodes:
        log.info("ray node %s at %s: %d GPU(s), cluster GPUs %s", n.name, n.address, n.gpus, list(n.global_gpus))
    return inv


def disconnect() -> None:
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()
