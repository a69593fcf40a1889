"""cumem_shim: elastic KV-cache memory for stock SGLang through CUDA virtual memory.

Not built yet (see README.md in this folder): this package is the placeholder the layout needs.
"""
