"""What chimera needs of SGLang's LoRA serving (0.5.17 and 0.5.23; the flags and routes are in
both contract files, tests/unit/test_contract.py):

- A base model's server starts with ``--enable-lora --max-loras-per-batch N --max-loaded-loras M
  --max-lora-rank R --lora-target-modules ...``. Without ``--lora-paths`` SGLang asserts that
  both ``--max-lora-rank`` and ``--lora-target-modules`` are given, and that
  ``--max-loaded-loras >= --max-loras-per-batch`` (``server_args.check_lora_server_args``).
- ``POST /load_lora_adapter`` (routes in ``api.py``) ``{"lora_name", "lora_path", "pinned"}`` and ``POST
  /unload_lora_adapter {"lora_name"}`` answer ``LoRAUpdateOutput`` ``{"success",
  "error_message", "loaded_adapters"}``: 200 on success, 400 otherwise (``http_server.py``,
  ``io_struct.py``).
- A request runs on adapter A with ``"model": "<served>:A"`` on the OpenAI routes (split on the
  first colon, ``serving_base._parse_model_parameter``) and ``"lora_path": "A"`` on /generate.
- A request for an adapter loaded once and unloaded since is re-loaded implicitly; one never
  loaded fails with a 400 (``tokenizer_manager._resolve_lora_path``).
"""

from __future__ import annotations

from typing import Any

from orchestrator.engines.base import served_name
from orchestrator.types import LoraLimits

# The messages SGLang answers when chimera's view and the engine's differ (after a restart of
# chimera that re-adopted its engines): both mean the engine is already where chimera wants it.
ALREADY_LOADED = "because it is already loaded"
NOT_LOADED = "does not exist"


def lora_flags(limits: LoraLimits) -> list[str]:
    """The launch flags of a base model's server."""
    return [
        "--enable-lora",
        "--max-loras-per-batch",
        str(limits.max_loras_per_batch),
        "--max-loaded-loras",
        str(limits.max_loaded),
        "--max-lora-rank",
        str(limits.max_lora_rank),
        "--lora-target-modules",
        *limits.target_modules,
    ]


def lora_name(model_name: str) -> str:
    """The adapter's name on the engine: the model's name, with ``:`` made safe as for served
    names (``engines/base.served_name``)."""
    return served_name(model_name)


def adapter_model(base_served: str, adapter: str) -> str:
    """The OpenAI ``model`` that runs ``adapter`` on a server serving ``base_served``."""
    return f"{base_served}:{adapter}"


def split_adapter(served: str) -> tuple[str, str | None]:
    """``(base, adapter)`` of a served model name, as SGLang parses it."""
    base, sep, adapter = served.partition(":")
    return (base, adapter.strip() or None) if sep else (served, None)


def load_body(name: str, path: str) -> dict[str, Any]:
    return {"lora_name": name, "lora_path": path, "pinned": False}


def unload_body(name: str) -> dict[str, Any]:
    return {"lora_name": name}
