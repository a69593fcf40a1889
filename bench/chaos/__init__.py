"""Chaos bench on the sim engine: faults under load (engine kill -9 and SIGSTOP, a failed wake,
slowloris clients, oversized input, restarts of the control plane, clients that leave) and what
every request got (``load.py``), with recovery time and chimera's memory and descriptors
(``scenarios.py``); ``python -m bench.chaos`` writes a JSON report and a table (``report.py``).
Short versions run in tests/integration/test_chaos_sim.py."""
