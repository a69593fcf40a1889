"""The global scheduler's policy (mode full): ``place.decide(view, now)`` turns a
``cluster.ClusterView`` into activations, migrations and idle parks, by KV pressure
(``kvpr.py``) and decode time-slicing (``tpot.py``)."""
