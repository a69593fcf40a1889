"""A simulated SGLang server: its own process (``python -m simsglang``), like
``python -m sglang.launch_server``, serving SGLang's HTTP API with the calibrated performance
model of orchestrator/perf/ instead of a GPU. chimera's live path never imports it: it only
starts it (orchestrator/engines/simulated.py); tests/unit/test_architecture.py checks that."""
