"""How much of a colocated neighbour's work a server's own work waits for, by how the GPU's
compute is shared: the one owner of that factor (the TPOT guard: policy/placement/charges.py
and tpot.py; the layout's decode interference: layout/interference.py; ``chimera-orch plan``).

- ``timeslice`` (no MPS): the GPU runs one process's kernels at a time, so while k servers
  decode, a token of each costs about the sum of their steps (one *round*): a neighbour's step
  counts whole. Measured on an H200, two 8B servers decoding together: 2.16x their TPOT alone
  at batch 4, 2.18x at batch 32 (the model says 2x).
- ``mps`` (the CUDA MPS daemon, supervisor/mps.py): kernels of the servers run at once on the
  GPU's SMs; a decode step is mostly memory-bound and leaves SMs idle, so a neighbour's step
  lengthens ours by a share of it (``MPS_DECODE_NEIGHBOUR``: 1.63x at batch 4 and 1.60-1.67x at
  batch 32 for the same pair). Measured for decode only: a prefill is compute-bound and keeps the
  SMs busy, so prefill work still adds up whole in both modes (no measurement says otherwise;
  span.py's sums take it so).
Pairs of unequal size (1B next to 8B) were slowed down less than the sum of steps says in both
modes (the small model's kernels fit beside the large one's); the model keeps the conservative
sum, scaled.

The discrete-event simulator (bench/sim/servers.py) charges a round of decode steps under MPS by
``mps_round_s``: the sum of the steps, as time-sliced, less ``MPS_DECODE_OVERLAP`` of the GPU work
of every step but the one with the most work. A step's fixed cost (scheduler iteration, launches:
the latency model's ``decode_fixed_s``) is not hidden, so a small model, whose step is mostly that
cost, gains little (measured: 1B+1B 0.94-1.12x MPS over time-slicing, 8B+8B 1.24-1.27x). For two
8B servers it charges a neighbour 0.635 of its step, ``decode_weight("mps")``'s 0.63.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.perf.calibration import MPS_DECODE_NEIGHBOUR, MPS_DECODE_OVERLAP
from orchestrator.types import GpuSharing, GpuSharingOption

_DECODE: dict[GpuSharing, float] = {"timeslice": 1.0, "mps": MPS_DECODE_NEIGHBOUR}


def decode_weight(sharing: GpuSharing) -> float:
    """Share of a decoding neighbour's step that a server's decode step waits for: 1.0 exactly
    under time-slicing (the guard's arithmetic is then what it was before MPS existed)."""
    return _DECODE[sharing]


def mps_round_s(steps: Sequence[tuple[float, float]]) -> float:
    """Seconds for one decode step of each server decoding on one GPU at once under MPS, given
    (step seconds, its fixed cost in seconds) per server: the fixed cost overlaps nothing. One
    step alone: itself; time-sliced the round would be the steps' sum. Fitted to two servers
    (calibration.py MPS_DECODE_OVERLAP); for more, every step but the one with the most work is
    overlapped alike [assumed]. No step: 0."""
    works = [max(0.0, step - fixed) for step, fixed in steps]
    return sum(step for step, _ in steps) - MPS_DECODE_OVERLAP * (sum(works) - max(works, default=0.0))


def resolve(option: GpuSharingOption, engine: str, control_found: bool) -> tuple[GpuSharing, str]:
    """``host.gpu_sharing`` as it applies to a run of ``engine`` on a host where the MPS control
    binary is (``control_found``) or is not on PATH, and why, in words. ``auto`` is MPS only for
    the sglang engine with the binary there (the sim engine models no MPS); ``mps`` asked for is
    MPS whatever the engine (the caller refuses it when the binary is missing)."""
    if option == "timeslice":
        return "timeslice", "host.gpu_sharing: timeslice"
    if option == "mps":
        return "mps", "host.gpu_sharing: mps"
    if engine != "sglang":
        return "timeslice", f"host.gpu_sharing: auto, {engine} engine"
    if not control_found:
        return "timeslice", "host.gpu_sharing: auto, no nvidia-cuda-mps-control on PATH"
    return "mps", "host.gpu_sharing: auto, nvidia-cuda-mps-control on PATH"
