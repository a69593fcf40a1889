"""Elastic KV on the orchestrator's side: the per-GPU ledger that splits each GPU's KV budget
among resident models by demand and sends the limits to each instance's cumem_shim.

- ``split.py``  — pure: budget -> limits (floors, needs, ceilings, blocks) and the phasing
  that never grows one instance before another's memory is free.
- ``demand.py`` — pure: a ``/v1/loads`` sample and the shim's count -> what an instance needs.
- ``ledger.py`` — the per-GPU ledger: observations -> ``SetLimit`` / ``FlushCache`` actions.
- ``client.py`` — asyncio client of the shim's control channel (Unix socket, JSON lines).
- ``runner.py`` — the task that observes (the scraper's samples, the shims' status), plans
  and acts every second (modes elastic, full).
"""
