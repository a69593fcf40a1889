"""The sampling parameters of an OpenAI request the sim honours, read and checked like SGLang.

Sources (SGLang 0.5.17): ``openai/protocol.py`` (field types; ``tool_choice`` defaults to "auto"
with tools, else "none"), ``serving_chat.py`` (``_validate_request``'s messages; tool_choice
"required" or a named function constrains the output to a JSON array of calls) and
``serving_completions.py`` (``logprobs`` is the number of top logprobs). The sim honours each
parameter or refuses it with a 400; none is ignored with a 200.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simsglang.structured import json_text, tool_call_text


class ParamError(ValueError):
    """A parameter SGLang would refuse (400); ``pydantic`` marks FastAPI's validation errors,
    whose type is "Bad Request" instead of "BadRequestError"."""

    def __init__(self, message: str, pydantic: bool = False) -> None:
        super().__init__(message)
        self.pydantic = pydantic


@dataclass(frozen=True)
class Sampling:
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    top_logprobs: int | None = None  # None: no logprobs asked; else how many top ones per token
    json_mode: bool = False  # response_format json_object or json_schema
    schema: dict[str, Any] | None = None  # json_schema's schema
    tools: tuple[dict[str, Any], ...] = ()
    tool_call: bool = False  # tool_choice "required" or a named function: the output is a call
    tool_name: str | None = None  # the named function

    def constrained_text(self, seed: int) -> str | None:
        """The output the grammar allows, or None for free text."""
        if self.tool_call:
            return tool_call_text(list(self.tools), self.tool_name, seed)
        if self.json_mode:
            return json_text(self.schema, seed)
        return None

    def choice_seed(self, index: int) -> int | None:
        """Choice ``index`` of ``n``: its own sample; choice 0 is what n=1 would give."""
        if index == 0:
            return self.seed
        return (self.seed or 0) * 1_000_003 + index


def _opt_int(body: dict[str, Any], key: str, lo: int = 0) -> int | None:
    val = body.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, int):
        raise ParamError(f"{key}: Input should be a valid integer (got {val!r})", pydantic=True)
    if val < lo:
        raise ParamError(f"{key}: Input should be greater than or equal to {lo} (got {val})", pydantic=True)
    return val


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(x, str) for x in stop):
        return tuple(stop)
    raise ParamError("stop: Input should be a valid string or a list of strings", pydantic=True)


def _common(body: dict[str, Any]) -> dict[str, Any]:
    n = _opt_int(body, "n", 1)
    return {"stop": _stop(body), "seed": _opt_int(body, "seed", -(2**63)), "n": 1 if n is None else n}


def _response_format(body: dict[str, Any]) -> dict[str, Any]:
    rf = body.get("response_format")
    if rf is None:
        return {}
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_mode": True}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict):
            raise ParamError("response_format.json_schema: Field required", pydantic=True)
        schema = spec.get("schema")
        if schema is None:
            raise ParamError("schema_ is required for json_schema response format request.")
        if not isinstance(schema, dict):
            raise ParamError("response_format.json_schema.schema: Input should be a valid dictionary", pydantic=True)
        return {"json_mode": True, "schema": schema}
    if kind == "structural_tag":
        raise ParamError("response_format structural_tag is not supported by the SIMULATED server")
    raise ParamError(
        f"response_format.type: Input should be 'text', 'json_object' or 'json_schema' (got {kind!r})",
        pydantic=True,
    )


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools)
        and all(isinstance(t["function"].get("name"), str) for t in tools)
    ):
        raise ParamError("tools: Input should be a valid list of tools with a function name", pydantic=True)
    tools = tools or []
    choice = body.get("tool_choice", "auto" if tools else "none")
    if isinstance(choice, str):
        if choice not in ("auto", "required", "none"):
            raise ParamError("tool_choice: Input should be 'auto', 'required' or 'none'", pydantic=True)
        if choice == "required" and not tools:
            raise ParamError("Tools cannot be empty if tool choice is set to required.")
        return {"tools": tuple(tools), "tool_call": choice == "required" and bool(tools)}
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise ParamError("tool_choice.function.name: Field required", pydantic=True)
    if not tools:
        raise ParamError("Tools cannot be empty if tool choice is set to a specific tool.")
    if not any(t["function"]["name"] == name for t in tools):
        raise ParamError(f"Tool '{name}' not found in tools list.")
    return {"tools": tuple(tools), "tool_call": True, "tool_name": name}


def chat_sampling(body: dict[str, Any]) -> Sampling:
    """``/v1/chat/completions``: ``logprobs`` is a bool, ``top_logprobs`` how many (0-20)."""
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool) and logprobs is not None:
        raise ParamError("logprobs: Input should be a valid boolean", pydantic=True)
    top = _opt_int(body, "top_logprobs")
    return Sampling(
        **_common(body),
        top_logprobs=(top or 0) if logprobs else None,
        **_response_format(body),
        **_tools(body),
    )


def completion_sampling(body: dict[str, Any]) -> Sampling:
    """``/v1/completions``: ``logprobs`` is the number of top logprobs (0 = only the chosen)."""
    top = _opt_int(body, "logprobs")
    if top is not None and body.get("echo"):
        raise ParamError("logprobs with echo (prompt logprobs) is not supported by the SIMULATED server")
    return Sampling(**_common(body), top_logprobs=top, **_response_format(body))
