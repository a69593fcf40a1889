"""A wheel read as source text, and the small AST helpers the contract extractor uses."""

from __future__ import annotations

import ast
import re
import zipfile
from pathlib import Path


class Wheel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.names = set(self.zip.namelist())
        self._trees: dict[str, ast.Module] = {}

    def tree(self, name: str) -> ast.Module:
        if name not in self._trees:
            self._trees[name] = ast.parse(self.zip.read(name).decode(), filename=name)
        return self._trees[name]

    def module_file(self, dotted: str) -> str | None:
        base = dotted.replace(".", "/")
        for cand in (f"{base}.py", f"{base}/__init__.py"):
            if cand in self.names:
                return cand
        return None

    def version(self) -> str:
        for n in self.names:
            if n.endswith(".dist-info/METADATA"):
                m = re.search(r"^Version: (\S+)$", self.zip.read(n).decode(), re.M)
                if m:
                    return m.group(1)
        raise SystemExit(f"{self.path}: no Version in the wheel's METADATA")


def str_const(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def name_of(node: ast.AST | None) -> str:
    """``x`` of ``x`` or ``a.b.x``; "" for anything else."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def callee(call: ast.Call) -> str:
    return name_of(call.func)


def str_list(node: ast.AST | None) -> list[str]:
    if isinstance(node, (ast.List, ast.Tuple)):
        return [s for e in node.elts if (s := str_const(e)) is not None]
    return []


def with_negations(names: list[str], action: ast.expr | None) -> list[str]:
    if name_of(action) == "BooleanOptionalAction":  # argparse adds --no-X for every --X
        return names + [f"--no-{n[2:]}" for n in names if n.startswith("--")]
    return names
