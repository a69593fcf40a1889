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


def model(name: str = "m", placement: str = "{gpus: [0]}", extra: str = "") -> str:
    return f"  - name: {name}\n    model_path: meta-llama/Llama-3.2-1B\n{extra}    placements: [{placement}]\n"


HOST = "host: {gpus: 2, gpu_memory_gb: 80}\nmodels:\n"


@pytest.mark.parametrize(
    ("placement", "extra", "field"),
    [
        ("{gpus: [0], kv_pool_gb: 81}", "", "kv_pool_gb"),
        ("{gpus: [0, 1], kv_pool_gb: 170}", "    tp_size: 2\n", "kv_pool_gb"),  # 85 GB per GPU
        ("{gpus: [0], kv_floor_gb: 90}", "", "kv_floor_gb"),
    ],
)
def test_kv_limits_larger_than_the_gpu_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], placement: str, extra: str, field: str
) -> None:
    path = tmp_path / "kv.yaml"
    path.write_text(HOST + model(placement=placement, extra=extra))
    code, text = check(path, capsys)
    assert code == 2 and f"models[0].placements[0].{field}" in text and "80 GB GPU" in text


def test_a_tp_group_may_hold_more_kv_than_one_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tp.yaml"
    path.write_text(
        HOST + model(placement="{gpus: [0, 1], kv_pool_gb: 150, kv_floor_gb: 40}", extra="    tp_size: 2\n")
    )
    assert check(path, capsys)[0] == 0


def test_a_pool_server_kv_limit_larger_than_the_gpu_names_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(
        HOST
        + model("a", extra="    pool: p\n").replace("    placements: [{gpus: [0]}]\n", "")
        + "pools:\n  - name: p\n    servers: [{gpus: [0]}, {gpus: [1], kv_pool_gb: 500}]\n"
    )
    code, text = check(path, capsys)
    assert code == 2 and "pools[0].servers[1].kv_pool_gb" in text


@pytest.mark.parametrize(
    ("name", "aliases", "field"),
    [
        ('"a\\u0007b"', "[]", "models[0].name"),
        ('"   "', "[]", "models[0].name"),
        ("m", '[ok, "x\\ny"]', "models[0].aliases[1]"),
        ("m", '["\\u2028"]', "models[0].aliases[0]"),
        ("m", '["\\t"]', "models[0].aliases[0]"),
    ],
)
def test_names_and_aliases_may_not_hold_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, aliases: str, field: str
) -> None:
    path = tmp_path / "names.yaml"
    path.write_text("models:\n" + model(name, extra=f"    aliases: {aliases}\n"))
    code, text = check(path, capsys)
    assert code == 2 and field in text


def test_pool_names_may_not_hold_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pool.yaml"
    body = "models:\n" + model("a", extra='    pool: "p\\u001b"\n').replace("    placements: [{gpus: [0]}]\n", "")
    path.write_text(body + 'pools:\n  - name: "p\\u001b"\n    servers: [{gpus: [0]}]\n')
    code, text = check(path, capsys)
    assert code == 2 and "models[0].pool" in text and "pools[0].name" in text and "control characters" in text


def test_cross_checks_run_beside_field_errors_and_every_problem_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        HOST
        + model("broken", extra="    priority: -1\n")
        + model("twin")
        + model("twin", placement="{gpus: [7]}")
        + model("big", placement="{gpus: [1], kv_pool_gb: 900}")
    )
    code, text = check(path, capsys)
    assert code == 2
    assert "models[0].priority" in text  # a field error...
    assert "models[2].name" in text and "already used" in text  # ...and the checks across models
    assert "models[2].placements[0].gpus" in text and "GPU 7 does not exist" in text
    assert "models[3].placements[0].kv_pool_gb" in text


def test_field_errors_give_their_yaml_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lines.yaml"
    path.write_text(
        HOST  # lines 1-2
        + model("a")  # lines 3-5
        + "  - name: b\n"  # line 6
        "    model_path: meta-llama/Llama-3.2-1B\n"
        "    placements:\n"
        "      - gpus: [1]\n"  # line 9
        "        kv_pool_gb: -3\n"  # line 10
        "    slo: {ttft_s: 1, tpot: 2}\n"  # line 11
        "  - model_path: meta-llama/Llama-3.2-1B\n"  # line 12: no name
        "    placements: [{gpus: [1]}]\n"
    )
    code, text = check(path, capsys)
    assert code == 2
    assert "line 10: models[1].placements[0].kv_pool_gb" in text
    assert "line 11: models[1].slo.tpot" in text
    assert "line 12: models[2].name" in text


@pytest.mark.parametrize("mode", ["static", "full"])
def test_static_pools_that_together_overflow_a_gpu_are_refused_in_mode_static(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    """Each pool fits the GPU alone; three of 30 GB beside their weights do not (mode static:
    fixed pools). In mode full ``kv_pool_gb`` is a ceiling the ledger shares: accepted."""
    path = tmp_path / "pools.yaml"
    body = "".join(model(n, placement="{gpus: [0], kv_pool_gb: 30}") for n in "abc")
    path.write_text(f"mode: {mode}\n" + HOST + body + model("d", placement="{gpus: [1], kv_pool_gb: 30}"))
    code, text = check(path, capsys)
    if mode == "full":
        assert code == 0, text
        return
    words = " ".join(text.split())  # the message is wrapped to the terminal
    assert code == 2 and "GPU 0:" in words and "GPU 1:" not in words
    assert "(a (2.3 + 30.0 GiB), b (2.3 + 30.0 GiB), c (2.3 + 30.0 GiB)) need 96.9 GiB" in words
    assert "more than the 80 GB GPU" in words
