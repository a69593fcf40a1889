"""Offline planning, used only by ``chimera-orch plan`` and the simulator (bench/sim): where to
put each model's servers before any traffic (``packing.py``), from awake and activity profiles of
a history trace (``profiles.py``) and the decode interference of colocated models
(``interference.py``, ``colocation.py``). The live path never imports it."""
