"""What one instance's KV wants now, from its latest ``/v1/loads`` sample and the shim's status.
Pure: the ledger's demand arithmetic. The body is read by orchestrator/sglang/loads.py (the
scraper's).

Tokens in use are the tokens of requests, not SGLang's prefix cache. The shim counts every
allocated slot (``Status.used_tokens``: requests and the radix tree's cached tokens), and SGLang
keeps a finished request's tokens cached until it needs the room, so a busy server's cache
grows to fill whatever limit it has. Counted as demand, that cache made every busy server need
its whole limit (and the horizon's growth on top), which kept an on/off model's burst at a few
requests' worth of KV while the rest of the GPU held cache nobody would read again. SGLang
reports ``num_used_tokens = max_total - available - evictable``, and under the shim
``available = max(0, limit - used)`` (the shim's ``available_size``, cumem_shim/hooks_sglang.py),
so the evictable part is ``max_total - available - num_used_tokens`` and the requests' tokens
are what the shim counts less that (``active_tokens``). What is cached still gets room when the
budget has some left over (split.py's idle share); it is just not a claim on others' memory.
"""

from __future__ import annotations

from orchestrator.types import LoadSample

HORIZON_S = 5.0  # growth to provide for: the token rate over the next few re-splits


def active_tokens(
    load: LoadSample, shim_used_tokens: int, shim_limit_tokens: int, shim_capacity_tokens: int | None = None
) -> int:
    """Tokens the instance's requests hold: the shim's count less SGLang's evictable prefix
    cache (module docstring). The sample and the status are read a moment apart: clamped to
    [0, the shim's count]. A sample whose pool is not the shim's (``shim_capacity_tokens``
    given and different: several DP ranks summed) says nothing about the cache: the shim's
    count as it is."""
    if shim_capacity_tokens is not None and load.capacity_tokens != shim_capacity_tokens:
        return shim_used_tokens
    available = max(0, shim_limit_tokens - shim_used_tokens)
    evictable = max(0, load.capacity_tokens - available - load.used_tokens)
    return max(0, shim_used_tokens - evictable)


def need_bytes(
    load: LoadSample,
    token_bytes: int,
    shim_used_tokens: int | None = None,
    horizon_s: float = HORIZON_S,
    held_tokens: int = 0,
    shim_limit_tokens: int | None = None,
    shim_capacity_tokens: int | None = None,
) -> int:
    """Bytes of KV this instance wants now: tokens its requests hold (the shim's count less the
    prefix cache when the shim's limit is known; SGLang's ``num_used_tokens`` alone counts the
    slots the limit holds back as used), queued prompt tokens, its generation rate over the
    horizon, and ``held_tokens``: the KV that requests held in the proxy's admission gate for it
    will take (mode full). The gate holds a request until the engine has KV room, so without
    them a model whose burst waits in the gate would show the ledger no demand, and its KV would
    never grow to let it in."""
    if shim_used_tokens is None:
        used = load.used_tokens
    elif shim_limit_tokens is None:
        used = shim_used_tokens
    else:
        used = active_tokens(load, shim_used_tokens, shim_limit_tokens, shim_capacity_tokens)
    tokens = used + load.waiting_tokens + held_tokens + load.gen_rate * horizon_s
    return int(tokens * token_bytes)
