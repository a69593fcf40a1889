"""YAML with the line of every field: one parse gives the data and a map from field path (the
validator's form, ``models[0].placements[1].kv_pool_gb``) to the line of its YAML node, so that
a problem can say where it is. An alias is walked once (at its anchor): the map stays as small
as the file, whatever an alias bomb would expand to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml


def load_with_lines(text: str, loader: type[yaml.SafeLoader]) -> tuple[Any, dict[str, int]]:
    """The document of ``text`` (``None`` if empty) and the 1-based line of each field path."""
    parser = loader(text)
    try:
        node = parser.get_single_node()
        if node is None:
            return None, {}
        lines: dict[str, int] = {}
        _walk(node, "", lines, set())
        return parser.construct_document(node), lines
    finally:
        parser.dispose()


def _walk(node: yaml.Node, path: str, lines: dict[str, int], seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            sub = f"{path}.{key.value}" if path else str(key.value)
            lines.setdefault(sub, key.start_mark.line + 1)
            _walk(value, sub, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines.setdefault(sub, item.start_mark.line + 1)
            _walk(item, sub, lines, seen)


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``path``, else of its nearest enclosing field (a missing field is reported
    where its mapping starts); None for a path that is not a field (``GPU 0``)."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            return None
        path = path[:cut]
    return None
