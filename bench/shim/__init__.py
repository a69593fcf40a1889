"""Benchmarks of cumem_shim on a CUDA GPU (map_bench.py)."""
