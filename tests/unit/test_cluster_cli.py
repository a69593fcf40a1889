"""``up --ray`` without Ray installed, and ``node:`` without ``--ray``: usage errors (exit 2)
with a clear message, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import EXIT_USAGE, main

FILE = {"models": [{"name": "m", "model_path": "tiny-llama", "placements": [{"node": "node-a", "gpus": [0]}]}]}


def write(tmp_path: Path) -> str:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(FILE))
    return str(p)


def test_ray_without_the_extra_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["up", write(tmp_path), "--engine", "sim", "--ray", "auto"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--ray needs Ray Core" in err and "chimera[ray]" in err and "Traceback" not in err


def test_a_node_field_without_ray_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", write(tmp_path), "--engine", "sim"]) == EXIT_USAGE
    assert "placements name nodes (node-a): that needs --ray" in capsys.readouterr().err
