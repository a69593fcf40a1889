"""Benchmarks that need the lent GPU and stock SGLang: ``trace`` (the live trace and the data a
calibration of the performance model needs; ``trace.sh`` runs it on the device)."""
