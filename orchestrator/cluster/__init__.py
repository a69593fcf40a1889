"""chimera across a Ray cluster (``chimera-orch up --ray``): the nodes and their GPUs
(``nodes.py``), placements on nodes (``placing.py``), the node agent actor that runs the
supervisor for its node (``agent.py``) and the Effects that reach the agents (``effects.py``).
Ray is an optional extra: only ``connect.py`` and ``effects.py`` import it, and lazily."""
