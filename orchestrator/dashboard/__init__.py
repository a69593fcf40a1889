"""The live dashboard served by the proxy at ``/`` and ``/dashboard`` (routes.py), its JSON
snapshot (state.py: a pure function of the router's views, the metrics and the history) and the
bounded history of state changes and scheduler decisions it shows (history.py)."""
