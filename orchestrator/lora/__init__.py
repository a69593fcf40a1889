"""LoRA adapters served as models of their own on their base model's servers: the router that
sends an adapter's requests to its base (``router.py``), which adapters each server holds
(``residency.py``, deciding through ``orchestrator/policy/lora.py``) and the engine calls
(``client.py``). docs/pools.md."""
