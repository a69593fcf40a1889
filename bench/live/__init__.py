"""Live benchmarks: chimera started as a child process (``process.py``) and driven through its
proxy by an open-loop client: ``run`` (one trace), ``modes`` (the same trace per deployment
mode), ``proxy_overhead`` and ``activation`` (park/wake)."""
