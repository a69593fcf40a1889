"""The model mixes of the experiments, built on shipped shapes and the H100 cost model.

Prism's mixes use models chimera has no shape for (12B Mistral-Nemo, 13B Llama-2, Phi, Gemma);
each is replaced by the nearest shipped shape, and the substitution is stated:
- ``mix8`` (Prism's 8 models on 2 GPUs: 3x12B, 8B, 2x7B, 2x3B): 4x llama-3.1-8b (the three 12B
  ones are lighter here), 2x qwen2.5-7b, 2x llama-3.2-3b;
- ``mix8m`` (the same, memory-matched: 130 GB of weights like Prism's 131 GB, so not all fit
  awake on 2 GPUs): 1x qwen2.5-32b (for the three 12B), 1x llama-3.1-8b, 2x qwen2.5-7b,
  2x llama-3.2-3b, 2x llama-3.2-1b;
- ``mix18`` (Prism's 18: 2x13B, 7B, 8B, 14 of 1-4B): 3x llama-3.1-8b, 1x qwen2.5-7b,
  7x llama-3.2-3b, 7x llama-3.2-1b;
- ``mix58`` (Prism's large scale: 43 of 1-3B, 8 of 4-8B, 3 of 9-30B, 4 of 31-70B):
  22x llama-3.2-1b + 21x llama-3.2-3b, 4x llama-3.1-8b + 4x qwen2.5-7b, 3x qwen2.5-32b (TP 1,
  the nearest shipped shape above 9-30B), 4x llama-3.3-70b (TP 2).
The order of models (which decides their popularity under Prism's power law) is a seeded
shuffle, so popularity does not follow size.
"""

from __future__ import annotations

import random

from bench.sim.servers import SimModel
from orchestrator.deployment import crowded_cost
from orchestrator.perf.calibration import H100, H100_ROUND, Calibration
from orchestrator.perf.cost import ServerCost
from orchestrator.perf.model import LatencyModel
from orchestrator.shapes import load_shape
from orchestrator.types import GpuSharing

GIB = 1 << 30
# The 80 GB card: 81,559 MiB = 79.6 GiB [measured] on the lent H100; the ledger plans all of it.
H100_BYTES = int(79.6 * GIB)
MIXES: dict[str, list[tuple[str, int, int]]] = {  # (shape, tp, count)
    "mix8": [("llama-3.1-8b", 1, 4), ("qwen2.5-7b", 1, 2), ("llama-3.2-3b", 1, 2)],
    "mix8m": [
        ("qwen2.5-32b", 1, 1),
        ("llama-3.1-8b", 1, 1),
        ("qwen2.5-7b", 1, 2),
        ("llama-3.2-3b", 1, 2),
        ("llama-3.2-1b", 1, 2),
    ],
    "mix18": [("llama-3.1-8b", 1, 3), ("qwen2.5-7b", 1, 1), ("llama-3.2-3b", 1, 7), ("llama-3.2-1b", 1, 7)],
    "mix58": [
        ("llama-3.2-1b", 1, 22),
        ("llama-3.2-3b", 1, 21),
        ("llama-3.1-8b", 1, 4),
        ("qwen2.5-7b", 1, 4),
        ("qwen2.5-32b", 1, 3),
        ("llama-3.3-70b", 2, 4),
    ],
}


def make_model(
    name: str, shape: str, tp: int = 1, calibration: Calibration = H100, cost: ServerCost | None = None
) -> SimModel:
    """One model; ``calibration`` sets its step times (memory, park and wake stay the H100's);
    ``cost``: a deployment's (orchestrator/deployment.py, for servers started as it starts them),
    else what the deployment starts a server with on a GPU its neighbours fill (``crowded_cost``:
    graphs for 32 sequences, 256 request slots)."""
    sh = load_shape(shape)
    lat = LatencyModel(sh, tp, calibration=calibration)
    return SimModel(name=name, shape_name=shape, tp=tp, cost=cost or crowded_cost(sh, tp), lat=lat)


def card(sharing: GpuSharing) -> Calibration:
    """The latency side of a run's servers: the H100's, whose colocated decode is the form
    measured on an H200 (calibration.py PER_OTHER_FIXED_S); under simulated MPS the time-sliced
    round that MPS is modelled over (H100_ROUND, perf/sharing.py ``mps_round_s``)."""
    return H100_ROUND if sharing == "mps" else H100


def fleet(mix: str, seed: int = 7, calibration: Calibration = H100) -> list[SimModel]:
    """The models of a mix, in popularity order (index 0 is the most popular at alpha < 1)."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r} (known: {', '.join(MIXES)})")
    kinds = [(shape, tp) for shape, tp, count in MIXES[mix] for _ in range(count)]
    random.Random(seed).shuffle(kinds)
    return [make_model(f"m{i:02d}-{shape}", shape, tp, calibration) for i, (shape, tp) in enumerate(kinds)]


def min_gpus(models: list[SimModel]) -> int:
    """GPUs needed just to hold the biggest model awake (any system needs at least this)."""
    return max(m.tp for m in models)
