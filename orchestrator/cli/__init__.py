"""``chimera-orch``: ``up`` and ``check`` (main.py), ``plan`` (plan.py)."""
