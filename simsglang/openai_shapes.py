"""OpenAI response bodies and stream chunks exactly as SGLang 0.5.17 builds them.

Sources: ``srt/entrypoints/openai/serving_chat.py`` (role chunk first, content deltas, a separate
finish chunk, optional usage chunk), ``sse_utils.py`` (chat chunks: ``reasoning_content`` always
present in the delta, ``usage`` omitted unless set), ``serving_completions.py`` (one chunk per
output with ``"usage": null``; final usage chunk dumped with exclude_none), ``protocol.py`` and
``usage_processor.py`` (UsageInfo fields and order). Input: SGLang output dicts (``text`` is
cumulative, ``meta_info`` has id, finish_reason, prompt/completion tokens, weight_version).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

Out = dict[str, Any]


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage(out: Out, details: bool = True) -> dict[str, Any]:
    m = out.get("meta_info", {})
    p, c = int(m.get("prompt_tokens", 0)), int(m.get("completion_tokens", 0))
    usage: dict[str, Any] = {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}
    if details:
        usage["prompt_tokens_details"] = None
    usage["reasoning_tokens"] = 0
    return usage


def _finish(out: Out) -> tuple[str | None, Any]:
    fr = out["meta_info"]["finish_reason"]
    return (fr["type"], fr.get("matched")) if fr else (None, None)


class ChatShape:
    """chat.completion and chat.completion.chunk bodies (serving_chat.py, sse_utils.py)."""

    def __init__(self, model: str, created: int) -> None:
        self.model, self.created = model, created
        self.include_usage = self.continuous = False
        self.offset, self.started = 0, False
        self.echo = ""

    def _chunk(
        self,
        out: Out,
        delta: dict[str, Any],
        finish: str | None = None,
        matched: Any = None,
        usage: dict[str, Any] | None = None,
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": out["meta_info"]["id"],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "delta": {"reasoning_content": None, **delta},
                    "logprobs": None,
                    "finish_reason": finish,
                    "matched_stop": matched,
                }
            ],
        }
        if usage is not None:
            chunk["usage"] = usage
        return sse(chunk)

    def chunks(self, out: Out) -> list[bytes]:
        frames = []
        if not self.started:
            self.started = True
            frames.append(self._chunk(out, {"role": "assistant", "content": ""}))
        delta, self.offset = out["text"][self.offset :], len(out["text"])
        if delta:
            usage = _usage(out) if self.continuous else None
            frames.append(self._chunk(out, {"content": delta}, usage=usage))
        return frames

    def tail(self, out: Out) -> list[bytes]:
        if not out:
            return []
        finish, matched = _finish(out)
        frames = [self._chunk(out, {}, finish, matched)] if finish else []
        if self.include_usage:
            frames.append(
                sse(
                    {
                        "id": out["meta_info"]["id"],
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": self.model,
                        "choices": [],
                        "usage": _usage(out),
                    }
                )
            )
        return frames

    def response(self, out: Out) -> dict[str, Any]:
        finish, matched = _finish(out)
        return {
            "id": out["meta_info"]["id"],
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": out["text"],
                        "reasoning_content": None,
                        "tool_calls": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "matched_stop": matched,
                }
            ],
            "usage": _usage(out),
            "metadata": {"weight_version": out["meta_info"]["weight_version"]},
        }


class CompletionShape(ChatShape):
    """text_completion bodies and chunks (serving_completions.py): one chunk per output."""

    def _body(self, out: Out, text: str) -> dict[str, Any]:
        finish, matched = _finish(out)
        return {
            "id": out["meta_info"]["id"],
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "matched_stop": matched}],
        }

    def chunks(self, out: Out) -> list[bytes]:
        delta, self.offset = out["text"][self.offset :], len(out["text"])
        if not self.started:
            self.started, delta = True, self.echo + delta
        return [sse({**self._body(out, delta), "usage": _usage(out) if self.continuous else None})]

    def tail(self, out: Out) -> list[bytes]:
        if not (out and self.include_usage):
            return []
        return [
            sse(
                {
                    "id": out["meta_info"]["id"],
                    "object": "text_completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": _usage(out, details=False),
                }
            )
        ]

    def response(self, out: Out) -> dict[str, Any]:
        return {
            **self._body(out, self.echo + out["text"]),
            "usage": _usage(out),
            "metadata": {"weight_version": out["meta_info"]["weight_version"]},
        }
