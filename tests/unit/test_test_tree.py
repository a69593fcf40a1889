"""The test tree's own guards: every test folder is a package, and everything the tests import is
declared, so `pip install -e '.[test]'` on a fresh host is enough to run them."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.unit.source_imports import ROOT, Import, imports, python_files

PROJECT = frozenset({"orchestrator", "simsglang", "cumem_shim", "bench", "tests"})

# GPU hosts only (the `gpu` extra; torch and safetensors come with sglang). Not installed on CPU hosts, so their
# distributions cannot be looked up here; the tests may import them only lazily, inside a test or
# helper that is skipped (or given a stand-in) without a GPU.
GPU_ONLY = {
    "sglang": "sglang",
    "torch": "sglang",
    "safetensors": "sglang",
    "pynvml": "nvidia-ml-py",
    "cuda": "cuda-python",
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    """``"uvicorn[standard]>=0.29"`` -> ``uvicorn``; names PEP 503-normalized."""
    out = set()
    for req in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        assert match, f"unreadable requirement {req!r} in pyproject.toml"
        out.add(normalize(match.group(1)))
    return out


def project_table() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"base": project["dependencies"], **project["optional-dependencies"]}


def undeclared(found: list[Import], declared: set[str], gpu: set[str]) -> list[str]:
    """What ``found`` imports from outside the project and the standard library without declaring it."""
    dists = packages_distributions()
    out = []
    for imp in found:
        top = imp.module.split(".")[0]
        where = f"{imp.file}:{imp.line} imports {imp.module}"
        if top in PROJECT or top in sys.stdlib_module_names:
            continue
        if top in GPU_ONLY:
            if imp.runtime:
                out.append(f"{where}: GPU-only, import it inside the test that needs it")
            elif normalize(GPU_ONLY[top]) not in gpu:
                out.append(f"{where}: {GPU_ONLY[top]} is not in the gpu extra")
            continue
        provided = {normalize(d) for d in dists.get(top, [])}
        if not provided:
            out.append(f"{where}: not installed, and no declared distribution provides it")
        elif not provided & declared:
            out.append(
                f"{where}: from {', '.join(sorted(provided))}, declared in neither the dependencies nor the test extra"
            )
    return out


def test_every_third_party_import_of_the_tests_is_declared() -> None:
    table = project_table()
    declared = requirement_names(table["base"]) | requirement_names(table["test"])
    # The tests import bench/, so what bench imports must be installed with the test extra too.
    found = [imp for path in python_files("tests", "bench") for imp in imports(path)]
    bad = undeclared(found, declared, requirement_names(table["gpu"]))
    assert not bad, "add these to [project.optional-dependencies] test in pyproject.toml:\n  " + "\n  ".join(bad)


def test_the_dependency_check_notices_an_undeclared_import() -> None:
    found = [
        Import("tests/unit/x.py", 1, "yaml", runtime=True),
        Import("tests/unit/x.py", 2, "json", runtime=True),
        Import("tests/unit/x.py", 3, "torch", runtime=True),
        Import("tests/unit/x.py", 4, "bench.sim", True),
    ]
    bad = undeclared(found, declared={"pytest"}, gpu={"sglang"})
    assert [b.split(" ")[0] for b in bad] == ["tests/unit/x.py:1", "tests/unit/x.py:3"]
    assert undeclared(found[:2], declared={"pyyaml"}, gpu=set()) == []


def test_every_test_folder_is_a_package() -> None:
    """tests/unit, tests/integration and tests/gpu are collected from one rootdir: as packages, their
    test modules are tests.unit.test_x and so on, so basenames may repeat across folders and
    `from tests.unit.control_fakes import ...` names the module pytest collected."""
    folders = {p.parent for p in (ROOT / "tests").rglob("test_*.py")}
    assert ROOT / "tests" / "unit" in folders
    missing = sorted(
        str(d.relative_to(ROOT))
        for f in folders
        for d in (f, *f.parents)
        if d.is_relative_to(ROOT / "tests") and not (d / "__init__.py").is_file()
    )
    assert not missing, f"add __init__.py to {sorted(set(missing))}"


def test_test_modules_are_collected_under_their_package_name() -> None:
    # Without tests/unit/__init__.py pytest would import this file as the top-level module
    # "test_test_tree", and `from tests.unit.x import ...` would load a second copy of x.
    assert __name__ == "tests.unit.test_test_tree"
