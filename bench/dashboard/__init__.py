"""The dashboard's cost to the proxy (``python -m bench.dashboard.cost``)."""
