"""bench/sim/scale.py: the cluster-scale fleet and its command (tiny sizes: the real one takes minutes)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.sim import scale
from bench.sim.__main__ import main


def test_scaled_fleet_keeps_mix58_proportions() -> None:
    models = scale.scaled_fleet(1000)
    assert len(models) == 1000 and len({m.name for m in models}) == 1000
    kinds = Counter((m.shape_name, m.tp) for m in models)
    assert kinds[("llama-3.3-70b", 2)] == 4 * 1000 // 58
    assert kinds[("qwen2.5-32b", 1)] == 3 * 1000 // 58
    assert kinds[("llama-3.2-1b", 1)] >= 22 * 1000 // 58
    assert [m.name for m in scale.scaled_fleet(1000)] == [m.name for m in models]  # seeded


def test_scale_command_runs_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scale", "--models", "20", "--gpus", "6", "--hours", "0.01", "--rate", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SIMULATED chimera: 20 models on 6 GPUs") and "joint attainment" in out


def test_fewest_gpus_bisects_on_attainment(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(system: str, n_models: int, g: int, rate: float, hours: float, seed: int = 1) -> dict[str, object]:
        return {
            "system": system,
            "models": n_models,
            "gpus": g,
            "hours": hours,
            "rate": rate,
            "requests": 1,
            "joint": 1.0 if g >= 13 else 0.5,
            "shed": 0,
            "sim_wall_s": 0.0,
            "wall_s": 0.0,
        }

    monkeypatch.setattr(scale, "run", fake)
    got = scale.fewest_gpus("chimera", 100, 10.0, 1.0, 4, 32, log=lambda _: None)
    assert got["fewest_gpus"] == 13
    assert scale.fewest_gpus("chimera", 100, 10.0, 1.0, 4, 12, log=lambda _: None)["fewest_gpus"] is None
