"""THE cost and latency model of an SGLang server: one set of numbers for the live scheduler,
the admission gate, the KV ledger, ``chimera-orch plan`` and both simulators."""
