"""Prism's JSON ``model_configs`` entries in chimera's schema."""

from __future__ import annotations

from typing import Any


def model_from_prism(i: int, m: Any) -> Any:
    """Prism's model_configs entry -> chimera's schema (unknown Prism keys are reported)."""
    if not isinstance(m, dict):
        return m
    out: dict[str, Any] = {}
    mapping = {"model_name": "name", "model_path": "model_path", "tp_size": "tp_size"}
    for k, val in m.items():
        if k in mapping:
            out[mapping[k]] = val
        elif k == "init_placements":
            out["placements"] = [
                {
                    ("gpus" if pk == "gpu_ids" else "kv_pool_gb" if pk == "max_memory_pool_size" else pk): pv
                    for pk, pv in p.items()
                }
                if isinstance(p, dict)
                else p
                for p in (val if isinstance(val, list) else [val])
            ]
        else:
            out[k] = val
    return out
