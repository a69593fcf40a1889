"""OpenAI response bodies and stream chunks exactly as SGLang 0.5.17 builds them.

Sources: ``srt/entrypoints/openai/serving_chat.py`` (role chunk first, content deltas, a separate
finish chunk, optional usage chunk), ``sse_utils.py`` (chat chunks: ``reasoning_content`` always
present in the delta, ``usage`` omitted unless set), ``serving_completions.py`` (one chunk per
output with ``"usage": null``; final usage chunk dumped with exclude_none), ``protocol.py`` and
``usage_processor.py`` (UsageInfo fields and order). Input: SGLang output dicts (``text`` is
cumulative, ``meta_info`` has id, finish_reason, prompt/completion tokens, weight_version, and
``output_token_logprobs`` / ``output_top_logprobs`` when logprobs were asked), each with the
``index`` of its choice when ``n`` > 1. Choices: usage counts the prompt once and every choice's
completion (UsageProcessor). Logprobs: chat's ``ChoiceLogprobs`` (``content``: token, bytes,
logprob, top_logprobs) and completions' ``LogProbs`` (``text_offset`` -1 as SGLang fills it,
``token_logprobs``, ``tokens``, ``top_logprobs``), from ``to_openai_style_logprobs``. Tool calls:
tool_choice "required" or a named function makes the output a JSON array of
``{"name", "parameters"}``, parsed into ``tool_calls`` (id ``call_`` + 24 hex digits, type
"function", ``arguments`` as ``json.dumps`` writes them) with content "" and finish_reason
"tool_calls" (``_process_tool_calls``); a stream sends the calls whole in one delta after the
text, where SGLang's JsonArrayParser sends the name and then argument fragments (clients that
accumulate deltas see the same call).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import orjson

Out = dict[str, Any]


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage(outs: list[Out], details: bool = True) -> dict[str, Any]:
    """UsageInfo of one prompt's choices: the prompt once, every choice's completion tokens."""
    metas = [o.get("meta_info", {}) for o in outs if o]
    p = int(metas[0].get("prompt_tokens", 0)) if metas else 0
    c = sum(int(m.get("completion_tokens", 0)) for m in metas)
    usage: dict[str, Any] = {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}
    if details:
        usage["prompt_tokens_details"] = None
    usage["reasoning_tokens"] = 0
    return usage


def _finish(out: Out) -> tuple[str | None, Any]:
    fr = out["meta_info"]["finish_reason"]
    return (fr["type"], fr.get("matched")) if fr else (None, None)


def _index(out: Out) -> int:
    return int(out.get("index", 0))


def _token_logprobs(out: Out, start: int) -> tuple[list[Any], list[Any]]:
    """Tokens ``start``.. of an output: ([logprob, id, text] each, their top ones or [])."""
    m = out["meta_info"]
    return m.get("output_token_logprobs", [])[start:], m.get("output_top_logprobs", [])[start:]


def _chat_logprobs(out: Out, start: int = 0) -> dict[str, Any]:
    tokens, tops = _token_logprobs(out, start)
    content = []
    for i, (lp, _, text) in enumerate(tokens):
        top = tops[i] if i < len(tops) else []
        content.append(
            {
                "token": text,
                "bytes": list(text.encode()),
                "logprob": lp,
                "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": v} for v, _, t in top],
            }
        )
    return {"content": content}


def _completion_logprobs(out: Out, start: int = 0) -> dict[str, Any]:
    tokens, tops = _token_logprobs(out, start)
    return {
        "text_offset": [-1] * len(tokens),
        "token_logprobs": [lp for lp, _, _ in tokens],
        "tokens": [text for _, _, text in tokens],
        "top_logprobs": [{t: v for v, _, t in row} for row in tops],
    }


def tool_calls(text: str) -> list[dict[str, Any]] | None:
    """The calls in a JSON-array output, or None if it is not one (cut short by max_tokens)."""
    try:
        data = json.loads(text)
        return [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "index": i,
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["parameters"], ensure_ascii=False)},
            }
            for i, c in enumerate(data)
        ]
    except (ValueError, TypeError, KeyError):
        return None


class ChatShape:
    """chat.completion and chat.completion.chunk bodies (serving_chat.py, sse_utils.py)."""

    def __init__(self, model: str, created: int, logprobs: bool = False, tool_call: bool = False) -> None:
        self.model, self.created = model, created
        self.logprobs, self.tool_call = logprobs, tool_call
        self.include_usage = self.continuous = False
        self.offsets: dict[int, int] = {}  # per choice: text sent so far
        self.sent_tokens: dict[int, int] = {}  # per choice: tokens whose logprobs were sent
        self.echo = ""

    def _chunk(
        self,
        out: Out,
        delta: dict[str, Any],
        finish: str | None = None,
        matched: Any = None,
        usage: dict[str, Any] | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": out["meta_info"]["id"],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": _index(out),
                    "delta": {"reasoning_content": None, **delta},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                    "matched_stop": matched,
                }
            ],
        }
        if usage is not None:
            chunk["usage"] = usage
        return sse(chunk)

    def _new_logprobs(self, out: Out) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        i, start = _index(out), self.sent_tokens.get(_index(out), 0)
        self.sent_tokens[i] = len(out["meta_info"].get("output_token_logprobs", []))
        return _chat_logprobs(out, start)

    def chunks(self, out: Out) -> list[bytes]:
        frames, i = [], _index(out)
        if i not in self.offsets:
            self.offsets[i] = 0
            frames.append(self._chunk(out, {"role": "assistant", "content": ""}))
        if self.tool_call:  # the calls go out whole at the end (see the module's docstring)
            return frames
        delta, self.offsets[i] = out["text"][self.offsets[i] :], len(out["text"])
        if delta:
            usage = _usage([out]) if self.continuous else None
            frames.append(self._chunk(out, {"content": delta}, usage=usage, logprobs=self._new_logprobs(out)))
        return frames

    def tail(self, lasts: dict[int, Out]) -> list[bytes]:
        frames = []
        for out in lasts.values():
            finish, matched = _finish(out)
            if not finish:
                continue
            calls = tool_calls(out["text"]) if self.tool_call else None
            if calls is not None:
                frames.append(self._chunk(out, {"tool_calls": calls}, logprobs=self._new_logprobs(out)))
                finish, matched = ("tool_calls", None) if finish == "stop" else (finish, matched)
            elif self.tool_call and out["text"]:
                frames.append(self._chunk(out, {"content": out["text"]}, logprobs=self._new_logprobs(out)))
            frames.append(self._chunk(out, {}, finish, matched))
        if self.include_usage and lasts:
            first = lasts[min(lasts)]
            frames.append(
                sse(
                    {
                        "id": first["meta_info"]["id"],
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": self.model,
                        "choices": [],
                        "usage": _usage(list(lasts.values())),
                    }
                )
            )
        return frames

    def _choice(self, out: Out, index: int) -> dict[str, Any]:
        finish, matched = _finish(out)
        text, calls = out["text"], None
        if self.tool_call and (calls := tool_calls(text)) is not None:
            text = ""
            finish, matched = ("tool_calls", None) if finish == "stop" else (finish, matched)
        return {
            "index": index,
            "message": {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": calls},
            "logprobs": _chat_logprobs(out) if self.logprobs else None,
            "finish_reason": finish,
            "matched_stop": matched,
        }

    def response(self, outs: list[Out]) -> dict[str, Any]:
        first = outs[0]
        return {
            "id": first["meta_info"]["id"],
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [self._choice(out, i) for i, out in enumerate(outs)],
            "usage": _usage(outs),
            "metadata": {"weight_version": first["meta_info"]["weight_version"]},
        }


class CompletionShape(ChatShape):
    """text_completion bodies and chunks (serving_completions.py): one chunk per output."""

    def _body(self, out: Out, text: str, logprobs: dict[str, Any] | None) -> dict[str, Any]:
        finish, matched = _finish(out)
        return {
            "id": out["meta_info"]["id"],
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": _index(out),
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                    "matched_stop": matched,
                }
            ],
        }

    def chunks(self, out: Out) -> list[bytes]:
        i = _index(out)
        start = self.offsets.get(i)
        delta, self.offsets[i] = out["text"][start or 0 :], len(out["text"])
        if start is None:
            delta = self.echo + delta
        logprobs = None
        if self.logprobs:
            first = self.sent_tokens.get(i, 0)
            self.sent_tokens[i] = len(out["meta_info"].get("output_token_logprobs", []))
            logprobs = _completion_logprobs(out, first)
        return [sse({**self._body(out, delta, logprobs), "usage": _usage([out]) if self.continuous else None})]

    def tail(self, lasts: dict[int, Out]) -> list[bytes]:
        if not (lasts and self.include_usage):
            return []
        first = lasts[min(lasts)]
        return [
            sse(
                {
                    "id": first["meta_info"]["id"],
                    "object": "text_completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": _usage(list(lasts.values()), details=False),
                }
            )
        ]

    def response(self, outs: list[Out]) -> dict[str, Any]:
        first = outs[0]
        choices = []
        for i, out in enumerate(outs):
            logprobs = _completion_logprobs(out) if self.logprobs else None
            choices.append({**self._body(out, self.echo + out["text"], logprobs)["choices"][0], "index": i})
        return {
            **self._body(first, "", None),
            "choices": choices,
            "usage": _usage(outs),
            "metadata": {"weight_version": first["meta_info"]["weight_version"]},
        }
