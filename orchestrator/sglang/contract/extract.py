"""Extract SGLang's serving contract from a released wheel, without importing SGLang.

    python -m orchestrator.sglang.contract.extract WHEEL... [--out-dir DIR]

Writes ``sglang-<version>.json`` per wheel (default: next to this file) with the CLI flags of
``sglang.launch_server``, the HTTP routes of ``srt/entrypoints/http_server.py`` and the
Prometheus metrics SGLang defines. Stdlib only (zipfile + ast): the wheel is read as text, so
this runs on any machine, with no torch and no GPU.

How each list is found (checked against the real argparse parser, see docs in __init__.py):
- flags: fields declared ``A[T, "help"]`` / ``A[T, Arg(...)]`` on ``ServerArgs`` (0.5.17) or on
  the namespace classes of ``srt/arg_groups/fields/`` listed in ``_INPUT_NAMESPACES`` (0.5.23),
  which ``add_cli_args_from_dataclass`` turns into ``--field-name`` (or ``Arg(cli_name=)``) plus
  ``Arg(aliases=)``, skipping ``Arg(no_cli=True)``; ``BooleanOptionalAction`` adds ``--no-X``;
  plus every literal ``parser.add_argument("--x", ...)`` in ``srt/server_args.py``.
- routes: ``@app.<method>(path)`` / ``@app.api_route(path, methods=[...])`` decorators, routers
  included with ``app.include_router`` (followed into their modules), and ``Mount(path)`` inside
  helpers that http_server.py calls (that is how ``/metrics`` is served). A path given as
  ``os.environ.get(VAR, default)`` is recorded with its default and ``env``; a route defined
  under a module-level ``if`` records the condition as ``only_if``.
- metrics: every ``Counter/Gauge/Histogram/Summary/GaugeHistogram(name="sglang:...")`` under
  ``srt/``. ``name`` is the family name as prometheus_client registers it (a counter declared
  ``x_total`` is family ``x``); the exposed samples follow from the type (``Metric.samples``).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.sglang.contract.wheel import (
    Wheel,
    callee,
    keyword,
    name_of,
    str_const,
    str_list,
    with_negations,
)

HERE = Path(__file__).parent
HTTP_METHODS = {
    "get": "GET",
    "post": "POST",
    "put": "PUT",
    "delete": "DELETE",
    "patch": "PATCH",
    "head": "HEAD",
    "options": "OPTIONS",
}
METRIC_TYPES = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
    "info": "info",
    "enum": "stateset",
    "gaugehistogram": "gauge",
}  # SGLang's GaugeHistogram is a Gauge with gt/le labels


# ----------------------------------------------------------------------------------------- flags


def _field_flags(cls: ast.ClassDef) -> list[str]:
    """Flags that ``add_cli_args_from_dataclass`` derives from one class's annotated fields."""
    out: list[str] = []
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        ann = stmt.annotation
        if not (
            isinstance(ann, ast.Subscript)
            and isinstance(ann.slice, ast.Tuple)
            and (
                (isinstance(ann.value, ast.Name) and ann.value.id in ("A", "Annotated"))
                or (isinstance(ann.value, ast.Attribute) and ann.value.attr == "Annotated")
            )
        ):
            continue
        arg: ast.Call | None = None
        for meta in ann.slice.elts[1:]:  # the first Arg(...) or help string wins; NS(...) not
            if isinstance(meta, ast.Call) and callee(meta) == "NS":
                continue
            arg = meta if isinstance(meta, ast.Call) and callee(meta) == "Arg" else None
            break
        else:
            continue  # no CLI metadata: not registered
        no_cli = keyword(arg, "no_cli") if arg else None
        if isinstance(no_cli, ast.Constant) and no_cli.value is True:
            continue
        default_cli = "--" + stmt.target.id.replace("_", "-")
        cli = (str_const(keyword(arg, "cli_name")) if arg else None) or default_cli
        names = [cli] + (str_list(keyword(arg, "aliases")) if arg else [])
        out += with_negations(names, keyword(arg, "action") if arg else None)
    return out


def _input_namespaces(tree: ast.Module) -> set[str] | None:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_INPUT_NAMESPACES" for t in stmt.targets
        ):
            assert isinstance(stmt.value, (ast.List, ast.Tuple))
            return {e.id for e in stmt.value.elts if isinstance(e, ast.Name)}
    return None


def extract_flags(whl: Wheel) -> tuple[list[str], list[str]]:
    """(all flags, deprecated flags) of ``ServerArgs.add_cli_args``."""
    sa = whl.tree("sglang/srt/server_args.py")
    namespaces = _input_namespaces(sa)
    flags: list[str] = []
    for node in sa.body:
        if isinstance(node, ast.ClassDef) and node.name == "ServerArgs":
            flags += _field_flags(node)
    if namespaces is not None:
        for name in sorted(whl.names):
            if name.startswith("sglang/srt/arg_groups/fields/") and name.endswith(".py"):
                for node in whl.tree(name).body:
                    if isinstance(node, ast.ClassDef) and node.name in namespaces:
                        flags += _field_flags(node)
    deprecated: list[str] = []
    for call in ast.walk(sa):
        if isinstance(call, ast.Call) and callee(call) == "add_argument":
            names = [s for a in call.args if (s := str_const(a)) is not None and s.startswith("-")]
            action = keyword(call, "action")
            flags += with_negations(names, action)
            if name_of(action).startswith("Deprecated"):
                deprecated += names
    if len(flags) < 100:
        raise SystemExit(f"{whl.path}: found only {len(flags)} flags; SGLang's layout changed")
    return sorted(set(flags)), sorted(set(deprecated))


# ---------------------------------------------------------------------------------------- routes


def _env_default(node: ast.AST | None) -> tuple[str | None, str] | None:
    """``os.environ.get(VAR[, default])`` -> (default, VAR); None for anything else."""
    if (
        isinstance(node, ast.Call)
        and callee(node) in ("get", "getenv")
        and node.args
        and (var := str_const(node.args[0])) is not None
    ):
        return (str_const(node.args[1]) if len(node.args) > 1 else None), var
    return None


def _functions(body: list[ast.stmt], cond: str | None = None) -> Iterator[tuple[ast.stmt, str | None]]:
    """Module-level defs, with the source of the ``if`` they sit under (None: unconditional)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, cond
        elif isinstance(node, ast.If):
            yield from _functions(node.body, ast.unparse(node.test))
            yield from _functions(node.orelse, f"not ({ast.unparse(node.test)})")
        elif isinstance(node, (ast.Try, ast.With)):
            yield from _functions(node.body, cond)


def _decorated_routes(tree: ast.Module, owners: set[str], prefix: str = "") -> list[dict[str, Any]]:
    env_names = {
        t.id: ev
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and (ev := _env_default(n.value))
    }
    out = []
    for fn, cond in _functions(tree.body):
        assert isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for dec in fn.decorator_list:
            if not (
                isinstance(dec, ast.Call)
                and isinstance(dec.func, ast.Attribute)
                and isinstance(dec.func.value, ast.Name)
                and dec.func.value.id in owners
            ):
                continue
            kind = dec.func.attr
            if kind in HTTP_METHODS:
                methods = [HTTP_METHODS[kind]]
            elif kind == "api_route":
                methods = str_list(keyword(dec, "methods")) or ["GET"]
            elif kind == "websocket":
                methods = ["WEBSOCKET"]
            else:
                continue
            node = dec.args[0] if dec.args else keyword(dec, "path")
            path, env = str_const(node), None
            if path is None:
                ev = _env_default(node) or env_names.get(name_of(node))
                if ev is None:
                    raise SystemExit(f"route of {fn.name}() has a path this script cannot read")
                path, env = ev
                if path is None:
                    continue  # served only when ${env} is set: not part of the default contract
            out.append(
                {
                    "path": prefix + path,
                    "methods": methods,
                    **({"env": env} if env else {}),
                    **({"only_if": cond} if cond else {}),
                }
            )
    return out


def _imports(tree: ast.Module) -> dict[str, tuple[str, str]]:
    return {
        (a.asname or a.name): (n.module, a.name)
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module
        for a in n.names
    }


def _router_prefix(tree: ast.Module, name: str) -> str:
    for n in ast.walk(tree):
        if (
            isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)
            and isinstance(n.value, ast.Call)
            and callee(n.value) == "APIRouter"
        ):
            return str_const(keyword(n.value, "prefix")) or ""
    return ""


def _find_function(whl: Wheel, mod: str, name: str, depth: int = 0) -> ast.FunctionDef | None:
    """The def of ``mod.name``, following re-exports (``from x import *`` / ``import name``)."""
    f = whl.module_file(mod)
    if f is None or depth > 3:
        return None
    tree = whl.tree(f)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name in ("*", name) for a in node.names):
            orig = next((a.name for a in node.names if (a.asname or a.name) == name), name)
            if (found := _find_function(whl, node.module, orig, depth + 1)) is not None:
                return found
    return None


def extract_routes(whl: Wheel) -> list[dict[str, Any]]:
    src = "sglang/srt/entrypoints/http_server.py"
    tree = whl.tree(src)
    imports = _imports(tree)
    routes = _decorated_routes(tree, {"app"})
    called = {callee(c) for c in ast.walk(tree) if isinstance(c, ast.Call)}
    for c in ast.walk(tree):
        if (
            isinstance(c, ast.Call)
            and callee(c) == "include_router"
            and c.args
            and isinstance(c.args[0], ast.Name)
            and c.args[0].id in imports
        ):
            mod, attr = imports[c.args[0].id]
            f = whl.module_file(mod)
            if f is None:
                raise SystemExit(f"{src}: included router {mod}.{attr} is not in the wheel")
            rt = whl.tree(f)
            routes += _decorated_routes(rt, {attr}, _router_prefix(rt, attr))
        elif isinstance(c, ast.Call) and callee(c) == "add_api_route" and c.args:
            path = str_const(c.args[0])
            if path:
                routes.append({"path": path, "methods": str_list(keyword(c, "methods")) or ["GET"]})
    for local, (mod, attr) in imports.items():  # Mount(...) inside helpers http_server.py calls
        wanted = local in called and mod.startswith("sglang")
        fn = _find_function(whl, mod, attr) if wanted else None
        for c in ast.walk(fn) if fn else ():
            if isinstance(c, ast.Call) and callee(c) == "Mount" and (p := str_const(c.args[0] if c.args else None)):
                routes.append({"path": p, "methods": ["*"], "mount": True})
    merged: dict[str, dict[str, Any]] = {}
    for r in routes:
        m = merged.setdefault(r["path"], {**r, "methods": []})
        m["methods"] = sorted(set(m["methods"]) | set(r["methods"]))
    return [merged[p] for p in sorted(merged)]


# --------------------------------------------------------------------------------------- metrics


def extract_metrics(whl: Wheel) -> list[dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name in sorted(whl.names):
        if not (name.startswith("sglang/srt/") and name.endswith(".py")):
            continue
        raw = whl.zip.read(name)
        if b'"sglang:' not in raw and b"'sglang:" not in raw:
            continue
        for c in ast.walk(whl.tree(name)):
            if not isinstance(c, ast.Call):
                continue
            metric = str_const(keyword(c, "name") or (c.args[0] if c.args else None))
            if metric is None or not metric.startswith("sglang:"):
                continue
            kind = METRIC_TYPES.get(callee(c).lstrip("_").removeprefix("Prom").lower())
            if kind is None:
                continue  # e.g. a tracing span or process title, not a metric
            if kind == "counter":
                metric = metric.removesuffix("_total")
            if metric in found and found[metric]["type"] != kind:
                raise SystemExit(f"{name}: {metric} declared as {kind} and {found[metric]['type']}")
            found.setdefault(metric, {"name": metric, "type": kind, "module": name})
    return [found[k] for k in sorted(found)]


# ------------------------------------------------------------------------------------------ main


def extract(wheel_path: Path) -> dict[str, Any]:
    whl = Wheel(wheel_path)
    flags, deprecated = extract_flags(whl)
    return {
        "version": whl.version(),
        "wheel": wheel_path.name,
        "sha256": hashlib.sha256(wheel_path.read_bytes()).hexdigest(),
        "extracted_by": "orchestrator/sglang/contract/extract.py",
        "flags": flags,
        "deprecated_flags": deprecated,
        "routes": extract_routes(whl),
        "metrics": extract_metrics(whl),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheels", nargs="+", type=Path, help="sglang-*.whl files")
    p.add_argument("--out-dir", type=Path, default=HERE)
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for w in args.wheels:
        data = extract(w)
        out = args.out_dir / f"sglang-{data['version']}.json"
        out.write_text(json.dumps(data, indent=1) + "\n")
        print(
            f"{out}: {len(data['flags'])} flags, {len(data['routes'])} routes, {len(data['metrics'])} metrics",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
