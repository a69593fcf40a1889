"""Calibration of the performance model (orchestrator/perf/) from a live GPU run: what the run
records (``data``), the samples (``samples``), least squares (``fit``) and the command
(``python -m bench.calibration.calibrate``)."""
