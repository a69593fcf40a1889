"""What a server holds on each of its GPUs besides its weights and KV, by state (the KV
ledger, orchestrator/kv/, counts with these). An awake server holds a runtime overhead (CUDA
context, NCCL, CUDA graphs, activations); a parked one keeps only its process's context.
Numbers measured on the H100 with stock SGLang 0.5.17 (docs/gpu-testing.md): a parked server holds
1.5-2.4 GB; CUDA graphs of an 8B shape take 1.43 GB.
"""

from __future__ import annotations

GIB = 1 << 30
PARKED_BYTES = int(2.4 * GIB)  # measured upper end: 2,362 MiB for the 8B shape parked
AWAKE_OVERHEAD_BYTES = int(4.0 * GIB)  # context (2.4) + graphs (1.43 for 8B) + activations slack
