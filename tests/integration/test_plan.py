"""``chimera-orch plan``: the dry run of the global scheduler on a placements file."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from rich.console import Console

from orchestrator.cli import plan
from orchestrator.cli.args import add_plan_parser
from orchestrator.config import load_config
from orchestrator.perf.cost import COLD_START_S, server_cost
from orchestrator.shapes import load_shape

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def _run(*argv: str) -> tuple[int, str]:
    p = argparse.ArgumentParser()
    add_plan_parser(p.add_subparsers(dest="command"))
    con = Console(record=True, width=200)
    rc = plan.run(p.parse_args(["plan", *argv]), con)
    return rc, con.export_text()


def test_plan__prints_budgets_and_the_chosen_placement() -> None:
    rc, out = _run(str(ROOT / "placements/example.yaml"), "--rates", "llama-8b=4,qwen-7b=2,small=1")
    assert rc == 0
    for text in (
        "memory budget per GPU",
        "llama-8b@gpu0",
        "all parked",
        "KV pressure ratio",
        "wake qwen-7b@gpu1",
        "SIMULATED",
    ):
        assert text in out
    assert "llama-3b" not in out.split("placement the global scheduler")[1]  # no demand, stays parked


def test_plan__flags_a_model_that_can_never_wake(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "host": {"gpus": 1},
                "mode": "full",
                "models": [
                    {
                        "name": "big",
                        "model_path": "Qwen/Qwen2.5-32B-Instruct",
                        "placements": [{"gpus": [0], "on": False}],
                    },
                    *(
                        {
                            "name": f"s{i}",
                            "model_path": "meta-llama/Llama-3.2-1B",
                            "placements": [{"gpus": [0], "on": False}],
                        }
                        for i in range(8)  # their contexts (2.3 GiB each) leave the 32B too little
                    ),
                ],
            }
        )
    )
    rc, out = _run(str(f))
    assert rc == plan.EXIT_IMPOSSIBLE
    assert "big@gpu0 can never wake on GPU 0" in out and "CUDA contexts of the 9 servers" in out


def test_plan__rates_name_unknown_models_with_the_known_ones() -> None:
    cfg = load_config(ROOT / "placements/example.yaml")
    try:
        plan.parse_rates("nope=1", cfg)
    except SystemExit as exc:
        assert "unknown model 'nope'" in str(exc) and "llama-8b" in str(exc)
    else:
        raise AssertionError("expected SystemExit")


def test_plan__server_cost_uses_the_h100_model() -> None:
    c = server_cost(load_shape("llama-3.1-8b"))
    assert 2.2 * GIB < c.parked_bytes < 2.4 * GIB  # measured CUDA context of a parked server
    assert c.awake_bytes > load_shape("llama-3.1-8b").weight_bytes
    assert 0.3 < c.wake_s < 0.6 and c.cold_start_s == COLD_START_S


def test_plan__shows_a_tp_group_on_every_gpu_it_spans_beside_small_models() -> None:
    rc, out = _run(str(ROOT / "placements/tp4-mixed.yaml"), "--rates", "llama-70b=2,small-0=5,small-2=1")
    assert rc == 0, out
    after = out.split("each GPU after the placement")[1]
    rows = {int(line.split("│")[1]): line for line in after.splitlines() if line.startswith("│")}
    assert sorted(rows) == [0, 1, 2, 3]
    for line in rows.values():  # the group's memory, KV pressure and steps on each of its GPUs
        assert "llama-70b@gpu0+1+2+3 (TP 4)" in line
        cells = [c.strip() for c in line.split("│")]
        assert float(cells[5]) > 0 and float(cells[6].removesuffix(" ms")) > 0, line
        assert float(cells[3].removesuffix(" GiB")) > 35, line  # a 70B shard is 33 GiB of weights
    assert "small-0@gpu0" in rows[0] and "small-2@gpu2" in rows[2] and "small-1" not in rows[1]
    round_ms = {g: float(rows[g].split("│")[6].strip().removesuffix(" ms")) for g in rows}
    assert round_ms[0] > round_ms[1] == round_ms[3]  # the 1B's steps add to the group's on GPU 0
    assert "TP groups: GPU 0+1+2+3" in out
