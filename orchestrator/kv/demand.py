"""What one instance's KV wants now, from its latest ``/v1/loads`` sample and the shim's status.
Pure: the ledger's demand arithmetic. The body is read by orchestrator/sglang/loads.py (the
scraper's); SGLang's ``num_used_tokens`` counts the slots the shim's limit holds back as used,
so the shim's ``used_tokens`` wins when known.
"""

from __future__ import annotations

from orchestrator.types import LoadSample

HORIZON_S = 5.0  # growth to provide for: the token rate over the next few re-splits


def need_bytes(
    load: LoadSample,
    token_bytes: int,
    shim_used_tokens: int | None = None,
    horizon_s: float = HORIZON_S,
    held_tokens: int = 0,
) -> int:
    """Bytes of KV this instance wants now: tokens in use (the shim's count when known),
    queued prompt tokens, its generation rate over the horizon, and ``held_tokens``: the KV
    that requests held in the proxy's admission gate for it will take (mode full). The gate
    holds a request until the engine has KV room, so without them a model whose burst waits in
    the gate would show the ledger no demand, and its KV would never grow to let it in."""
    used = load.used_tokens if shim_used_tokens is None else shim_used_tokens
    tokens = used + load.waiting_tokens + held_tokens + load.gen_rate * horizon_s
    return int(tokens * token_bytes)
