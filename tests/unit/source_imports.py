"""The imports a Python file makes, read with ``ast`` (nothing is imported): the shared reader of
test_architecture.py and test_test_dependencies.py."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Import:
    file: str  # repository-relative POSIX path of the importing file
    line: int
    module: str  # absolute dotted name (relative imports resolved)
    # Executed when the file itself is imported: at module (or class) level and not under
    # ``if TYPE_CHECKING:``. Imports inside functions and type-only imports are not.
    runtime: bool


def module_name(path: Path, root: Path = ROOT) -> str:
    """``orchestrator/kv/ledger.py`` -> ``orchestrator.kv.ledger``; a package's ``__init__.py`` is the package."""
    parts = list(path.resolve().relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_repo_module(name: str, root: Path = ROOT) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def python_files(*folders: str, root: Path = ROOT) -> list[Path]:
    return sorted(p for folder in folders for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import statement in ``path``. ``from X import y`` names ``X.y`` when that is a module of the
    repository (``from orchestrator import layout`` imports orchestrator.layout), else ``X``."""
    rel = path.resolve().relative_to(root).as_posix()
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out: list[Import] = []
    for node, runtime in _walk(ast.parse(path.read_text(), filename=rel).body, runtime=True):
        if isinstance(node, ast.Import):
            out += [Import(rel, node.lineno, alias.name, runtime) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.append(Import(rel, node.lineno, sub if is_repo_module(sub, root) else base, runtime))
    return out


def _walk(body: list[ast.stmt], runtime: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, runtime
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk(node.body, runtime=False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _walk(node.body, runtime=False)
            yield from _walk(node.orelse, runtime)
        else:
            # Class bodies and try/with/for/if/match at module level run on import.
            for field in ("body", "orelse", "finalbody"):
                children = getattr(node, field, [])
                yield from _walk([c for c in children if isinstance(c, ast.stmt)], runtime)
            for clause in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]:
                yield from _walk(clause.body, runtime)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
