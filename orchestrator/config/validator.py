"""The validator every section uses: problems collected with their field paths, never raised one by one."""

from __future__ import annotations

import difflib
import math
import unicodedata
from collections.abc import Mapping
from typing import Any

from orchestrator.config.marks import line_of
from orchestrator.config.spec import (
    W,
)
from orchestrator.errors import ConfigError

# control characters (C0, DEL, C1) and line or paragraph separators: a name holding one prints
# wrong in logs, metrics labels and tables, or splits a line
_CONTROL = ("Cc", "Zl", "Zp")


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a model name, alias or pool name (None: it can)."""
    if not isinstance(value, str) or not value.strip():
        return f"needs a non-empty string, not only whitespace (got {value!r})"
    bad = next((c for c in value if unicodedata.category(c) in _CONTROL), None)
    if bad is not None:
        return f"may not hold control characters (got {value!r}, with {bad!r})"
    return None


class Validator:
    """``lines``: the YAML line of each field path (marks.py); a problem whose path has one
    starts with ``line N:``."""

    def __init__(self, lines: Mapping[str, int] | None = None) -> None:
        self.problems: list[str] = []
        self.lines: Mapping[str, int] = lines or {}

    def err(self, path: str, msg: str) -> None:
        line = line_of(path, self.lines) if path else None
        where = f"line {line}: " if line is not None else ""
        self.problems.append(f"{where}{path}: {msg}" if path else msg)

    def raise_if_any(self, source: str) -> None:
        if self.problems:
            raise ConfigError([f"{source}: {p}" for p in self.problems])

    def one_of(self, value: object, path: str, allowed: tuple[W, ...], default: W) -> W:
        """``value`` as one of the words ``allowed`` (a Literal's values), else an error and
        ``default``."""
        for word in allowed:
            if value == word:
                return word
        self.err(path, f"must be one of {', '.join(allowed)} (got {value!r})")
        return default

    def keys(self, obj: dict[str, Any], path: str, allowed: set[str]) -> None:
        for k in obj:
            if k not in allowed:
                near = difflib.get_close_matches(str(k), sorted(allowed), n=1)
                hint = f"did you mean `{near[0]}`?" if near else f"allowed: {', '.join(sorted(allowed))}"
                self.err(f"{path}.{k}" if path else str(k), f"unknown field ({hint})")

    def number(
        self, obj: dict[str, Any], key: str, path: str, *, minimum: float = 0, integer: bool = False
    ) -> float | None:
        val = obj.get(key)
        if val is None:
            return None
        ok = isinstance(val, int) if integer else isinstance(val, (int, float)) and math.isfinite(val)
        if isinstance(val, bool) or not ok or val < minimum:
            kind = "an integer" if integer else "a number"
            self.err(f"{path}.{key}", f"must be {kind} >= {minimum} (got {val!r})")
            return None
        return float(val)
