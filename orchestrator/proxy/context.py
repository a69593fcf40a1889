"""A request the model's context cannot hold, refused up front (400 ``context_length_exceeded``)
instead of being held for a wake and sent to an engine that refuses it.

Stock SGLang (0.5.17, tokenizer_manager ``_validate_one_request``) refuses a request whose input
has ``n >= context`` tokens, or whose ``n + max_new_tokens > context`` (the total may equal the
context: the scheduler then clips the output). The proxy has no tokenizer, so it refuses only
what is CERTAIN to be refused, from a LOWER bound on ``n``:

- ``input_ids`` (``/generate``, or ``prompt`` as token ids on ``/v1/completions``): their count;
- text: its UTF-8 bytes / ``MAX_BYTES_PER_TOKEN``, rounded up, and at least 1 (chat templates
  and an empty text still give the model a token). Never the chars/4 estimate admission uses:
  that one may be above the real count;
- a batch (a list of prompts): its shortest prompt (refused only if every prompt would be).

``max_new_tokens`` counts only when the client sent it (SGLang checks the total only then):
``max_completion_tokens`` or else ``max_tokens`` (chat, SGLang's order), ``max_tokens``
(completions), ``sampling_params.max_new_tokens`` (``/generate``). A value that is not a
positive integer is left to the engine's own validation.

The context is the one ``GET /v1/models`` reports (``max_model_len``: ``--context-length``
among the model's ``engine_args``, else its config's ``max_position_embeddings``).
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import ModelSpec
from orchestrator.proxy.errors import ProxyError
from orchestrator.sglang.api import CHAT_COMPLETIONS, COMPLETIONS, GENERATE, max_model_len

# The most UTF-8 bytes one token can stand for, in any tokenizer chimera may serve. BPE
# vocabularies hold long runs of spaces, dashes or '=' as single tokens; this bound is set well
# above them, so that a text's tokens are never fewer than its bytes / this. Too high only makes
# the check refuse less (the engine then answers its own 400); too low would refuse a request
# the engine accepts.
MAX_BYTES_PER_TOKEN = 256


def check_context(route: str, spec: ModelSpec, body: dict[str, Any]) -> None:
    """Raises ProxyError (400, ``context_length_exceeded``) if ``body`` on ``route`` certainly
    exceeds ``spec``'s context; returns otherwise (also for a body it cannot read: the engine
    validates it)."""
    prompt = prompt_tokens_at_least(route, body)
    if prompt is None:
        return
    new = requested_new_tokens(route, body)
    context = max_model_len(spec.shape.max_context, spec.engine_args)
    if prompt >= context:
        what, param = f"a prompt of at least {prompt} tokens", _PROMPT_FIELD.get(route)
        if route == GENERATE.path:
            param = "input_ids" if _prompts(body.get("input_ids")) is not None else "text"
    elif new is not None and prompt + new > context:
        what = f"at least {prompt + new} tokens ({new} new tokens and a prompt of at least {prompt})"
        param = _NEW_FIELD.get(route)
        if route == CHAT_COMPLETIONS.path and _positive(body.get("max_completion_tokens")):
            param = "max_completion_tokens"
    else:
        return
    raise ProxyError.bad_request(
        f"model {spec.name!r} has a context of {context} tokens (prompt and output together); this "
        f"request asks for {what}. Shorten the prompt or lower the number of new tokens "
        f"(GET /v1/models reports each model's max_model_len).",
        code="context_length_exceeded",
        param=param,
    )


_PROMPT_FIELD = {CHAT_COMPLETIONS.path: "messages", COMPLETIONS.path: "prompt"}
_NEW_FIELD = {CHAT_COMPLETIONS.path: "max_tokens", COMPLETIONS.path: "max_tokens", GENERATE.path: "max_new_tokens"}


def prompt_tokens_at_least(route: str, body: dict[str, Any]) -> int | None:
    """A lower bound on the prompt's tokens; None if the body has no prompt it can read."""
    if route == CHAT_COMPLETIONS.path:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        return _text_tokens(sum(_message_bytes(m) for m in messages))
    if route == COMPLETIONS.path:
        return _prompts(body.get("prompt"))
    if route == GENERATE.path:
        ids = _prompts(body.get("input_ids"))
        return ids if ids is not None else _prompts(body.get("text"))
    return None


def requested_new_tokens(route: str, body: dict[str, Any]) -> int | None:
    """The client's own limit on new tokens, None when it sent none (see the module's doc)."""
    if route == CHAT_COMPLETIONS.path:
        # SGLang: ``max_completion_tokens or max_tokens``
        return _positive(body.get("max_completion_tokens")) or _positive(body.get("max_tokens"))
    if route == COMPLETIONS.path:
        return _positive(body.get("max_tokens"))
    if route == GENERATE.path:
        params = body.get("sampling_params")
        return _positive(params.get("max_new_tokens")) if isinstance(params, dict) else None
    return None


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text_tokens(n_bytes: int) -> int:
    return max(1, -(-n_bytes // MAX_BYTES_PER_TOKEN))


def _message_bytes(message: object) -> int:
    """UTF-8 bytes of a chat message's text (a string, or the ``text`` of its content parts)."""
    if not isinstance(message, dict):
        return 0
    content = message.get("content")
    if isinstance(content, str):
        return len(content.encode("utf-8", "surrogatepass"))
    if isinstance(content, list):
        return sum(
            len(p["text"].encode("utf-8", "surrogatepass"))
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return 0


def _prompts(value: object) -> int | None:
    """One prompt (a string, or token ids) or a batch of them: the lower bound of its shortest."""
    if isinstance(value, str):
        return _text_tokens(len(value.encode("utf-8", "surrogatepass")))
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return len(value)
    bounds = [_prompts(v) if isinstance(v, str | list) else None for v in value]
    if any(b is None for b in bounds):
        return None
    return min(b for b in bounds if b is not None)
