"""Shape pools: models with no server of their own, served by re-targeting a warm server of
their shape (``router.py``), which model each pooled server holds (``holdings.py``, deciding
through ``orchestrator/policy/pools.py``) and the switch itself (``retarget.py``).
docs/pools.md."""
