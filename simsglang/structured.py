"""Constrained output of the sim: JSON that conforms to a request's schema.

SGLang compiles ``response_format`` (json_object, json_schema) and ``tool_choice`` "required" or
a named function (serving_chat's fallback ``get_json_schema_constraint``: a JSON array of
``{"name", "parameters"}``) into a grammar, so the model can only write conforming JSON and then
EOS. The sim has no model to constrain: it writes one value per schema, drawn deterministically
from the request's seed, so the output is valid JSON and parses into the client's model
(``openai``'s ``.parse()`` with a pydantic class). Covered: ``$ref``/``$defs``, ``anyOf``/``oneOf``
/``allOf`` (first non-null branch), ``enum``, ``const``, objects (every property), arrays
(``minItems``..``maxItems``), strings (``minLength``/``maxLength``, common ``format``s), integers
and numbers (``minimum``/``maximum``, exclusive bounds), booleans and null. ``pattern`` is not
honoured (no regex generator): a schema with one gets a plain word.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from simsglang.tokenizer import WORDS

_FORMATS = {
    "date-time": "2024-05-01T12:00:00Z",
    "date": "2024-05-01",
    "time": "12:00:00",
    "email": "someone@example.com",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "uri": "https://example.com/",
    "ipv4": "192.0.2.1",
}
_MAX_DEPTH = 8  # recursive schemas (a tree of itself) stop at an empty object or array here
_PIECE = re.compile(r"\w{1,8}|\s+|[^\w\s]")


class SchemaError(ValueError):
    """A schema the sim cannot write a value for (a 400, as SGLang's grammar compiler gives)."""


def value_for(schema: Any, seed: int) -> Any:
    """One value that conforms to ``schema`` (a JSON Schema dict), the same for the same seed."""
    if not isinstance(schema, dict):
        raise SchemaError(f"JSON schema must be an object, got {type(schema).__name__}")
    return _Writer(schema, random.Random(seed)).value(schema, 0)


def json_text(schema: dict[str, Any] | None, seed: int) -> str:
    """The constrained output text: compact JSON as xgrammar writes it (``", "``/``": "``)."""
    value = value_for(schema, seed) if schema is not None else {"answer": _word(random.Random(seed))}
    return json.dumps(value, ensure_ascii=False)


def tool_call_text(tools: list[dict[str, Any]], name: str | None, seed: int) -> str:
    """The JSON array serving_chat's json_schema constraint makes the model write for tool_choice
    "required" (the first tool) or a named function: ``[{"name": ..., "parameters": {...}}]``."""
    fn = next(t["function"] for t in tools if name is None or t["function"]["name"] == name)
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    return json.dumps([{"name": fn["name"], "parameters": value_for(params, seed)}], ensure_ascii=False)


def pieces(text: str) -> tuple[str, ...]:
    """The text cut into tokens (words of up to 8 characters, runs of blanks, single marks)."""
    return tuple(_PIECE.findall(text))


def _word(rng: random.Random) -> str:
    return WORDS[rng.randrange(len(WORDS) - 2)]


class _Writer:
    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root, self.rng = root, rng

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise SchemaError(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            if not isinstance(node, dict) or part not in node:
                raise SchemaError(f"$ref {ref!r} does not resolve")
            node = node[part]
        if not isinstance(node, dict):
            raise SchemaError(f"$ref {ref!r} is not a schema")
        return node

    def value(self, s: dict[str, Any], depth: int) -> Any:
        if "$ref" in s:
            return self.value(self._resolve(s["$ref"]), depth + 1)
        if "const" in s:
            return s["const"]
        if isinstance(s.get("enum"), list) and s["enum"]:
            return s["enum"][self.rng.randrange(len(s["enum"]))]
        for key in ("anyOf", "oneOf", "allOf"):
            branches = s.get(key)
            if isinstance(branches, list) and branches:
                real = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
                return self.value((real or branches)[0], depth + 1) if real else None
        kind = s.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in s else "array" if "items" in s else "string"
        if kind == "object":
            props = s.get("properties") or {}
            if depth >= _MAX_DEPTH:
                props = {k: v for k, v in props.items() if k in (s.get("required") or [])}
            return {k: self.value(v if isinstance(v, dict) else {}, depth + 1) for k, v in props.items()}
        if kind == "array":
            lo = int(s.get("minItems", 0))
            hi = int(s.get("maxItems", max(lo, 2)))
            n = lo if depth >= _MAX_DEPTH else max(lo, min(hi, 1 + self.rng.randrange(2)))
            items: dict[str, Any] = s["items"] if isinstance(s.get("items"), dict) else {}
            return [self.value(items, depth + 1) for _ in range(n)]
        if kind == "string":
            return self._string(s)
        if kind in ("integer", "number"):
            return self._number(s, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        raise SchemaError(f"unsupported JSON schema type {kind!r}")

    def _string(self, s: dict[str, Any]) -> str:
        fmt = s.get("format")
        text = _FORMATS[fmt] if fmt in _FORMATS else _word(self.rng).strip()
        lo, hi = int(s.get("minLength", 0)), s.get("maxLength")
        while len(text) < lo:
            text += _word(self.rng).strip()
        return text[: int(hi)] if hi is not None else text

    def _number(self, s: dict[str, Any], integer: bool) -> int | float:
        lo = s.get("minimum", s.get("exclusiveMinimum", 0))
        hi = s.get("maximum", s.get("exclusiveMaximum", lo + 100))
        if integer:
            a = int(lo) + (1 if "exclusiveMinimum" in s and "minimum" not in s else 0)
            b = int(hi) - (1 if "exclusiveMaximum" in s and "maximum" not in s else 0)
            return a if b < a else self.rng.randint(a, b)
        return round(float(lo) + (float(hi) - float(lo)) * (0.25 + 0.5 * self.rng.random()), 3)
