"""cumem_shim: elastic KV-cache memory for stock SGLang through CUDA virtual memory.

Loaded by SGLang's plugin loader (``plugin.activate``); nothing here imports torch, CUDA or
SGLang at import time. See README.md in this folder and docs/cumem-shim.md.
"""
