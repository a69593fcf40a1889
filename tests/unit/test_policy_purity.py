"""Policies are pure: no clock, logging, asyncio, httpx or CUDA anywhere in orchestrator/policy/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

POLICY_DIR = Path(__file__).resolve().parents[2] / "orchestrator" / "policy"
FORBIDDEN = {"time", "datetime", "logging", "asyncio", "httpx", "torch", "cuda", "pynvml",
             "random", "threading", "subprocess", "os", "socket", "uvicorn", "starlette"}
ALLOWED_INTERNAL = ("orchestrator.policy", "orchestrator.perf", "orchestrator.types", "orchestrator.config",
                    "orchestrator.shapes")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


@pytest.mark.parametrize("path", sorted(POLICY_DIR.glob("*.py")), ids=lambda p: p.name)
def test_policy_module_imports_nothing_impure(path: Path) -> None:
    for mod in _imports(path):
        top = mod.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name} imports {mod}"
        if top == "orchestrator":
            assert mod.startswith(ALLOWED_INTERNAL), f"{path.name} imports {mod}"


def test_the_check_sees_policy_files() -> None:
    assert len(list(POLICY_DIR.glob("*.py"))) >= 2
