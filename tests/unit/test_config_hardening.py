"""Hostile or broken placements files through ``chimera-orch check``: exit code 2, a message
that says what is wrong, no traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.cli.main import main

GOOD = "models:\n  - name: m\n    model_path: meta-llama/Llama-3.2-1B\n    placements: [{gpus: [0]}]\n"


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", str(path)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


def test_a_good_file_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD)
    assert check(path, capsys)[0] == 0


def test_a_file_that_is_not_utf8_exits_2_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    code, text = check(path, capsys)
    assert code == 2 and "not UTF-8" in text and "line 5" in text


def test_a_billion_laughs_file_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("models: *i")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    code, text = check(path, capsys)
    assert time.monotonic() - start < 1.0
    assert code == 2 and "aliases" in text and "expand to more than" in text


def test_a_few_aliases_are_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text(
        GOOD.replace("placements: [{gpus: [0]}]", "placements: &p [{gpus: [0]}]") + "  - name: n\n"
        "    model_path: meta-llama/Llama-3.2-1B\n    placements: *p\n"
    )
    code, text = check(path, capsys)
    assert code == 0 and "expand to more than" not in text


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    path = tmp_path / "nan.yaml"
    path.write_text(GOOD.replace("placements: [{gpus: [0]}]", f"placements: [{{gpus: [0], kv_pool_gb: {value}}}]"))
    code, text = check(path, capsys)
    assert code == 2 and "kv_pool_gb" in text
