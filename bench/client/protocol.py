"""Request bodies and stream lines of the three routes, as sglang.bench_serving sends and reads
them: streaming, greedy, ``ignore_eos`` with a fixed output length, usage in the last chunk.
Pure functions; the load generator does the I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from bench.client.prompts import CHAT, GENERATE, ROUTES, prompt_ids, prompt_words
from bench.traces import BenchRequest


@dataclass(frozen=True)
class Line:
    """One parsed SSE line."""

    done: bool = False  # data: [DONE]
    has_output: bool = False  # carries generated text
    completion_tokens: int | None = None  # cumulative (generate) or final (usage chunk)
    prompt_tokens: int | None = None
    error: str | None = None  # an error frame (the proxy or engine broke off the stream)


def body(req: BenchRequest, route: str, seed: int, ids: bool = False) -> bytes:
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; use one of {', '.join(ROUTES)}")
    if ids and route == CHAT:
        raise ValueError("token-id prompts need /v1/completions or /generate (chat takes text)")
    key = seed * 1_000_003 + req.id
    prompt: str | list[int] = prompt_ids(req.prompt_tokens, key) if ids else prompt_words(req.prompt_tokens, route, key)
    payload: dict[str, Any]
    if route == GENERATE:
        payload = {
            "model": req.model,
            ("input_ids" if ids else "text"): prompt,
            "stream": True,
            "sampling_params": {"max_new_tokens": req.output_tokens, "ignore_eos": True, "temperature": 0.0},
        }
    else:
        payload = {
            "model": req.model,
            "max_tokens": req.output_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if route == CHAT:
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
    return orjson.dumps(payload)


def parse_line(raw: str, route: str) -> Line | None:
    """None for blank lines and SSE comments; raises ValueError for a line that is not JSON."""
    text = raw.strip()
    if not text or text.startswith(":"):
        return None
    if text.startswith("data:"):
        text = text[5:].strip()
    if text == "[DONE]":
        return Line(done=True)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"stream line is not JSON: {text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"stream line is not a JSON object: {text[:200]!r}")
    err = data.get("error")
    if err:
        msg = err.get("message") if isinstance(err, dict) else err
        return Line(error=str(msg))
    if route == GENERATE:
        meta = data.get("meta_info") or {}
        return Line(
            has_output=bool(data.get("text")),
            completion_tokens=_int(meta.get("completion_tokens")),
            prompt_tokens=_int(meta.get("prompt_tokens")),
        )
    choices = data.get("choices") or []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    piece = (first.get("delta") or {}).get("content") if route == CHAT else first.get("text")
    usage = data.get("usage") or {}
    return Line(
        has_output=bool(piece),
        completion_tokens=_int(usage.get("completion_tokens")),
        prompt_tokens=_int(usage.get("prompt_tokens")),
    )


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
