"""The four systems of the one-GPU experiment, each a placements file derived from one set-up
file (bench/gpu/placements/setup-*.yaml, written as the ``full`` system), so that they differ in
what the issue compares and in nothing else:

- static: static partitioning. Mode static; only the models placed ``on: true`` (the set that
  fits at once) are in the file, each with its fixed ``kv_pool_gb``. The others are left out,
  not placed ``on: false``: in mode static an ``on: false`` server is cold-started by its first
  request (the start-up policy), which would be swapping, not partitioning. Their requests are
  counted by the runner as misses without being sent (``unserved``).
- swap: swap-on-demand as llama-swap does it, one per GPU: mode full with
  ``scheduler.max_awake_per_gpu: 1``; at ``up`` the first model (file order) of each GPU is
  awake (a TP model counts on each of its GPUs, and takes them only when none is taken yet),
  every other is parked; a request for a parked model parks the awake one(s) of its GPUs (after
  their requests drain) and wakes it. KV is elastic.
- elastic: mode elastic (KV moves between resident servers; nothing is parked); the same models
  as static, with their ``kv_pool_gb`` dropped (the KV ledger sizes pools).
- full: the set-up file (mode full: park/wake, global placement, elastic KV) with its
  ``kv_pool_gb`` dropped: in modes elastic and full ``kv_pool_gb`` is the shim's ceiling, and the
  static pools written in the set-up would cap each model's KV at its static share.
"""

from __future__ import annotations

import copy
from typing import Any

SYSTEMS = ("static", "swap", "elastic", "full")


def served(raw: dict[str, Any], system: str) -> list[str]:
    """The models whose requests the system is sent (file order)."""
    return [m["name"] for m in derive(raw, system)["models"]]


def derive(raw: dict[str, Any], system: str, gpu_sharing: str | None = None) -> dict[str, Any]:
    """The placements file of ``system`` from the set-up's (a mapping as YAML 1.2 reads it), its
    ``host.gpu_sharing`` set to ``gpu_sharing`` when given (every system alike)."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r} (known: {', '.join(SYSTEMS)})")
    out = copy.deepcopy(raw)
    if gpu_sharing is not None:
        out["host"] = {**out.get("host", {}), "gpu_sharing": gpu_sharing}
    models: list[dict[str, Any]] = out["models"]
    if system == "full":
        out["mode"] = "full"
        for m in models:
            for pl in m["placements"]:
                pl.pop("kv_pool_gb", None)
        return out
    if system == "swap":
        out["mode"] = "full"
        out["scheduler"] = {**out.get("scheduler", {}), "max_awake_per_gpu": 1}
        taken: set[int] = set()
        for m in models:
            for pl in m["placements"]:
                pl["on"] = not taken & set(pl["gpus"])
                if pl["on"]:
                    taken |= set(pl["gpus"])
                pl.pop("kv_pool_gb", None)  # the one awake model may use the GPU's KV
        return out
    resident = [m for m in models if any(pl.get("on", True) for pl in m["placements"])]
    if not resident:
        raise ValueError("the set-up places no model `on: true`: static and elastic have nothing to serve")
    out["mode"] = system
    out["models"] = resident
    if system == "elastic":
        for m in resident:
            for pl in m["placements"]:
                pl.pop("kv_pool_gb", None)
    return out
