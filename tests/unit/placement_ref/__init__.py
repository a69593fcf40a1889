"""The global scheduler as it was before its decision was optimized for 10,000 models x 4,096
GPUs (kvpr, tpot, place, migration; cluster and movecost are shared): the reference that
tests/unit/test_placement_equivalence.py holds the optimized decision to, outcome for outcome."""
