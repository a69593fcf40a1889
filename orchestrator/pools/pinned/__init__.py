"""Pinned weights staging for shape pools (``stage: pinned``, docs/pools.md): the holder
process that keeps checkpoints in pinned host RAM and pushes them into SGLang servers
(``holder.py``, torch), where their tensors lie (``layout.py``) and chimera's side of it
(``client.py``)."""
