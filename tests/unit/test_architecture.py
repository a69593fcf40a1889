"""The folders tell the truth: import boundaries between chimera's packages, read with ``ast``.

Each rule names the files it covers and the imports they may not make; a failure names the file, the
line and the import. Boundary rules count every import (also lazy ones inside functions and type-only
ones): a dependency is a dependency. The cycle check counts what runs on import: module-level imports
outside ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.source_imports import ROOT, Import, imports, python_files

SCANNED = ("orchestrator", "simsglang", "cumem_shim", "bench")

# Imports that break a rule only because a change in progress elsewhere has not landed yet. Each entry
# is (importing file, imported module); empty this list when those branches merge (a stale entry fails
# test_known_until_merged_entries_are_still_there, so it cannot outlive its reason).
# A policy decides from a snapshot and the time it is given: no clock, randomness, I/O, logging,
# event loop or GPU.
IMPURE = frozenset(
    {
        "time",
        "datetime",
        "logging",
        "asyncio",
        "httpx",
        "torch",
        "cuda",
        "pynvml",
        "random",
        "threading",
        "subprocess",
        "os",
        "socket",
        "uvicorn",
        "starlette",
    }
)


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


@dataclass(frozen=True)
class Rule:
    name: str
    covers: Callable[[str], bool]  # repository-relative path of the importing file
    forbids: Callable[[str], bool]  # imported module
    why: str


def _policy_forbids(module: str) -> bool:
    if module.split(".")[0] in IMPURE:
        return True
    allowed = (
        "orchestrator.policy",
        "orchestrator.types",
        "orchestrator.perf",
        "orchestrator.config",
        "orchestrator.shapes",
    )
    return within(module, "orchestrator") and not within(module, *allowed)


def _live_path(file: str) -> bool:
    return file.startswith("orchestrator/") and not (
        file.startswith("orchestrator/layout/") or file == "orchestrator/cli/plan.py"
    )


RULES = (
    Rule(
        "policy-is-pure",
        lambda f: f.startswith("orchestrator/policy/"),
        _policy_forbids,
        "policies are pure (decide(snapshot, now)) and import only types, perf, config, shapes and policy",
    ),
    Rule(
        "control-not-cli-or-proxy",
        lambda f: f.startswith("orchestrator/control/"),
        lambda m: within(m, "orchestrator.cli", "orchestrator.proxy"),
        "the control loop is below the commands and beside the proxy, which it reaches through the Router",
    ),
    Rule(
        "live-path-not-offline-planning",
        _live_path,
        lambda m: within(m, "orchestrator.layout"),
        "offline planning (orchestrator/layout/) serves `chimera-orch plan` only",
    ),
    Rule(
        "orchestrator-not-sim-or-bench",
        lambda f: f.startswith("orchestrator/"),
        lambda m: within(m, "simsglang", "bench"),
        "the simulated server is started as a process, never imported; benchmarks sit on top",
    ),
    Rule(
        "lora-beside-the-loop",
        lambda f: f.startswith(("orchestrator/lora/", "orchestrator/pools/")),
        lambda m: (
            within(m, "orchestrator.proxy", "orchestrator.cli", "orchestrator.kv")
            or within(m, "orchestrator.supervisor.supervisor", "orchestrator.supervisor.lifecycle")
        ),
        "LoRA adapters and shape pools sit between the proxy and the control loop: the proxy sees only a Router",
    ),
    Rule(
        "kv-not-launch",
        lambda f: f.startswith("orchestrator/kv/"),
        lambda m: within(m, "orchestrator.sglang.launch", "orchestrator.engines", "orchestrator.supervisor"),
        "the KV ledger reasons about memory, not about how engines are started",
    ),
    Rule(
        "perf-and-types-are-leaves",
        lambda f: f.startswith("orchestrator/perf/") or f == "orchestrator/types.py",
        lambda m: (
            not is_stdlib(m)
            and not within(m, "orchestrator.shapes", "orchestrator.types", "orchestrator.perf", "orchestrator.config")
        ),
        "the shared vocabulary and the performance model import only the standard library and each other",
    ),
    Rule(
        "ray-only-in-cluster-edges",
        lambda f: (
            f.startswith(("orchestrator/", "simsglang/", "cumem_shim/", "bench/"))
            and f not in ("orchestrator/cluster/connect.py", "orchestrator/cluster/effects.py")
        ),
        lambda m: within(m, "ray"),
        "Ray is an optional extra: only orchestrator/cluster/connect.py and effects.py import it (lazily)",
    ),
    Rule(
        "shim-not-orchestrator",
        lambda f: f.startswith("cumem_shim/"),
        lambda m: within(m, "orchestrator"),
        "cumem_shim runs inside SGLang's process, without chimera installed there",
    ),
    Rule(
        "cuda-only-in-driver",
        lambda f: f.startswith("cumem_shim/") and f != "cumem_shim/_driver.py",
        lambda m: within(m, "cuda"),
        "cumem_shim/_driver.py is the one owner of cuda-python",
    ),
)


def _all_imports() -> list[Import]:
    return [imp for path in python_files(*SCANNED) for imp in imports(path)]


ALL = _all_imports()


def _violations(rule: Rule) -> list[Import]:
    return [i for i in ALL if rule.covers(i.file) and rule.forbids(i.module)]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_no_import_crosses_the_boundary(rule: Rule) -> None:
    bad = list(_violations(rule))
    assert not bad, f"{rule.name} ({rule.why}):\n" + "\n".join(f"  {i.file}:{i.line} imports {i.module}" for i in bad)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_rule_covers_files(rule: Rule) -> None:
    """A rule that covers nothing (a moved folder, a typo) would pass forever."""
    assert any(rule.covers(p.relative_to(ROOT).as_posix()) for p in python_files(*SCANNED)), rule.name


def node_of(module: str) -> str:
    """A node of the package graph: orchestrator's subpackages and top-level modules one by one
    (orchestrator.kv, orchestrator.types), other top-level packages whole (simsglang, bench)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "orchestrator" else parts[0]


def package_graph(found: list[Import]) -> dict[str, dict[str, Import]]:
    """node -> {node it imports at import time -> one import that makes the edge}."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in found:
        if not imp.runtime or not within(imp.module, *SCANNED):
            continue
        src = node_of(Path(imp.file).with_suffix("").as_posix().replace("/", "."))
        dst = node_of(imp.module)
        if src != dst and dst != "orchestrator":  # orchestrator/__init__.py holds only the version
            graph.setdefault(src, {}).setdefault(dst, imp)
    return graph


def find_cycle(graph: dict[str, dict[str, Import]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph.get(start, {})))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, {}))))
    return None


def test_packages_import_no_package_that_imports_them_back() -> None:
    graph = package_graph(ALL)
    cycle = find_cycle(graph)
    if cycle is not None:
        edges = [graph[a][b] for a, b in zip(cycle, cycle[1:], strict=False)]
        pytest.fail(
            "import cycle "
            + " -> ".join(cycle)
            + ":\n"
            + "\n".join(f"  {e.file}:{e.line} imports {e.module}" for e in edges)
        )


def test_the_cycle_check_finds_a_cycle() -> None:
    def edge(src: str, dst: str) -> Import:
        return Import(src.replace(".", "/") + "/x.py", 1, dst + ".x", runtime=True)

    found = [
        edge("orchestrator.a", "orchestrator.b"),
        edge("orchestrator.b", "orchestrator.c"),
        edge("orchestrator.c", "orchestrator.a"),
        edge("orchestrator.c", "orchestrator.d"),
    ]
    assert find_cycle(package_graph(found)) == ["orchestrator.a", "orchestrator.b", "orchestrator.c", "orchestrator.a"]
    assert find_cycle(package_graph(found[1:])) is None
    lazy = [*found[1:], Import("orchestrator/a/x.py", 1, "orchestrator.b.x", runtime=False)]
    assert find_cycle(package_graph(lazy)) is None


def test_the_reader_sees_lazy_type_only_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (tmp_path / "pkg" / "other.py").write_text("")
    src = pkg / "mod.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from .. import other\n"
        "if TYPE_CHECKING:\n    import typed\nelse:\n    import untyped\n"
        "try:\n    import guarded\nexcept ImportError:\n    import fallback\n"
        "class C:\n    import in_class\n"
        "def f():\n    from .sib import x\n"
    )
    got = {(i.module, i.runtime) for i in imports(src, root=tmp_path)}
    assert got == {
        ("typing", True),
        ("pkg.other", True),
        ("typed", False),
        ("untyped", True),
        ("guarded", True),
        ("fallback", True),
        ("in_class", True),
        ("pkg.sub.sib", False),
    }


def test_the_scan_sees_every_package() -> None:
    files = {i.file.split("/")[0] for i in ALL}
    assert files == set(SCANNED)
    assert any(i.file.startswith("orchestrator/policy/placement/") for i in ALL)
