from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.config import load_config, parse_config
from orchestrator.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _one(**model: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "m",
        "model_path": "meta-llama/Llama-3.2-1B",
        "placements": [{"gpus": [0]}],
    }
    base.update(model)
    return {"models": [base]}


def _problems(raw: object, gpu_count: int | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, source="f.yaml", gpu_count=gpu_count)
    return exc.value.problems


def test_example_file_loads_with_three_sizes_on_two_gpus() -> None:
    cfg = load_config(ROOT / "placements/example.yaml")
    assert cfg.gpu_count == 2
    assert len({m.shape.name for m in cfg.models}) >= 3
    assert {g for i in cfg.instances for g in i.gpus} == {0, 1}
    assert cfg.model("llama3") is cfg.model("llama-8b")
    assert "small" in cfg.names()


def test_prism_json_is_accepted_as_is() -> None:
    cfg = load_config(ROOT / "placements/prism_1_gpu_2_model_colocate.json")
    assert [m.name for m in cfg.models] == ["model_1", "model_2"]
    pl = cfg.models[0].placements[0]
    assert pl.gpus == (0,) and pl.on is True and pl.kv_pool_gb == 10
    assert cfg.models[0].shape.name == "llama-3.1-8b"


def test_missing_gpu_names_field_path_and_host_range() -> None:
    raw = _one(placements=[{"gpus": [5]}])
    assert _problems(raw, gpu_count=4) == [
        "f.yaml: models[0].placements[0].gpus: GPU 5 does not exist (this host has 0-3)"
    ]


def test_unknown_field_suggests_the_near_one() -> None:
    probs = _problems(_one(alias=["x"]))
    assert any("models[0].alias: unknown field (did you mean `aliases`?)" in p for p in probs)


def test_tp_size_must_match_gpus() -> None:
    probs = _problems(_one(tp_size=2, placements=[{"gpus": [0]}]), gpu_count=2)
    assert any("tp_size is 2" in p and "models[0].placements[0].gpus" in p for p in probs)


def test_duplicate_names_and_aliases_are_reported_together() -> None:
    raw = {
        "models": [
            {"name": "a", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]},
            {"name": "b", "model_path": "llama-3.2-1b", "aliases": ["a"], "placements": [{"gpus": [0]}]},
            {"name": "b", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]},
        ]
    }
    probs = _problems(raw)
    assert any("models[1].aliases[0]" in p for p in probs)
    assert any("models[2].name" in p for p in probs)


def test_unknown_model_size_says_how_to_fix() -> None:
    probs = _problems(_one(model_path="/nowhere/model"))
    assert any("models[0].model_path" in p and "shape" in p for p in probs)


def test_weights_that_cannot_fit_a_gpu_are_rejected() -> None:
    raw = {
        "host": {"gpus": 1, "gpu_memory_gb": 80},
        "models": [{"name": f"q{i}", "model_path": "qwen2.5-32b", "placements": [{"gpus": [0]}]} for i in range(2)],
    }
    probs = _problems(raw)
    assert any(p.startswith("f.yaml: GPU 0:") and "on: false" in p for p in probs)


def test_parked_models_do_not_count_against_the_gpu() -> None:
    raw = {
        "host": {"gpus": 1},
        "models": [
            {"name": f"q{i}", "model_path": "qwen2.5-32b", "placements": [{"gpus": [0], "on": i == 0}]}
            for i in range(2)
        ],
    }
    assert len(parse_config(raw).instances) == 2


@pytest.mark.parametrize(
    "bad, path",
    [
        ({"models": []}, "models"),
        ([{"model_name": "x"}], "models[0].model_path"),
        (_one(placements=[{"gpus": ["0"]}]), "models[0].placements[0].gpus"),
        (_one(placements=[{"gpus": [0], "on": "yes"}]), "models[0].placements[0].on"),
        (_one(slo={"ttft_s": -1}), "models[0].slo.ttft_s"),
        (_one(load_format="pt"), "models[0].load_format"),
        ("just a string", "expected a mapping"),
    ],
)
def test_bad_values_name_their_path(bad: object, path: str) -> None:
    assert any(path in p for p in _problems(bad))


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_and_prism_forms_give_the_same_config(tmp_path: Path) -> None:
    prism = [
        {
            "model_name": "m",
            "model_path": "meta-llama/Llama-3.1-8B",
            "tp_size": 1,
            "init_placements": [{"gpu_ids": [0], "on": False, "max_memory_pool_size": 12}],
        }
    ]
    ours = {
        "models": [
            {
                "name": "m",
                "model_path": "meta-llama/Llama-3.1-8B",
                "tp_size": 1,
                "placements": [{"gpus": [0], "on": False, "kv_pool_gb": 12}],
            }
        ]
    }
    (tmp_path / "p.json").write_text(json.dumps(prism))
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(ours))
    a = load_config(tmp_path / "p.json")
    b = load_config(tmp_path / "o.yaml")
    assert a.models == b.models and a.instances == b.instances


def test_mode_idle_and_hold_defaults_and_overrides() -> None:
    raw = {
        "mode": "elastic",
        "idle": {"park_after_s": 60},
        "hold": {"per_model": 8},
        "models": [
            {"name": "a", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]},
            {
                "name": "b",
                "model_path": "tiny-llama",
                "idle": {"when": "always"},
                "placements": [{"gpus": [0], "kv_pool_gb": 4, "kv_floor_gb": 1}],
            },
        ],
    }
    cfg = parse_config(raw)
    assert cfg.mode == "elastic" and cfg.hold.per_model == 8 and cfg.hold.total == 1024
    a, b = cfg.models
    assert a.idle.park_after_s == 60 and a.idle.when == "needed"
    assert b.idle.park_after_s == 60 and b.idle.when == "always"
    assert b.placements[0].kv_floor_gb == 1
    assert parse_config({"models": raw["models"][:1]}).mode == "full"


def test_bad_mode_idle_and_floor_are_reported() -> None:
    raw = {
        "mode": "dynamic",
        "models": [
            {
                "name": "a",
                "model_path": "tiny-llama",
                "idle": {"when": "sometimes"},
                "placements": [{"gpus": [0], "kv_pool_gb": 1, "kv_floor_gb": 2}],
            }
        ],
    }
    probs = _problems(raw)
    assert any("mode: must be one of static, elastic, full" in p for p in probs)
    assert any("models[0].idle.when" in p for p in probs)
    assert any("models[0].placements[0].kv_floor_gb" in p for p in probs)


def test_max_awake_per_gpu_is_parsed_and_reaches_the_global_scheduler() -> None:
    from orchestrator.deployment import derive

    two = {
        "models": [
            {"name": "a", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0], "on": True}]},
            {"name": "b", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0], "on": False}]},
        ]
    }
    assert parse_config(two).scheduler.max_awake_per_gpu is None
    cfg = parse_config({**two, "scheduler": {"max_awake_per_gpu": 1}})
    assert cfg.scheduler.max_awake_per_gpu == 1
    assert derive(cfg).placement_params.max_awake_per_gpu == 1
    assert derive(parse_config(two)).placement_params.max_awake_per_gpu is None


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"scheduler": {"max_awake_per_gpu": 0}}, "scheduler.max_awake_per_gpu: must be an integer >= 1"),
        ({"scheduler": {"max_awake_per_gpu": 1.5}}, "scheduler.max_awake_per_gpu: must be an integer >= 1"),
        ({"scheduler": {"max_awake_per_gpu": 1}, "mode": "elastic"}, "needs mode full (got elastic)"),
    ],
)
def test_bad_max_awake_per_gpu_is_reported(extra: dict[str, object], needle: str) -> None:
    problems = _problems({**_one(), **extra})
    assert any(needle in p for p in problems), problems


def test_more_models_awake_at_up_than_max_awake_per_gpu_is_rejected() -> None:
    raw = {
        "scheduler": {"max_awake_per_gpu": 1},
        "models": [
            {"name": n, "model_path": "llama-3.2-1b", "placements": [{"gpus": [0], "on": True}]} for n in ("a", "b")
        ],
    }
    (problem,) = _problems(raw)
    assert "GPU 0: 2 models start awake (a, b) but scheduler.max_awake_per_gpu is 1" in problem


def test_wake_room_s_is_parsed_with_its_default_and_bound() -> None:
    one = {"models": [{"name": "a", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]}]}
    assert parse_config(one).scheduler.wake_room_s == 30.0
    assert parse_config({**one, "scheduler": {"wake_room_s": 0}}).scheduler.wake_room_s == 0.0
    probs = _problems({**one, "scheduler": {"wake_room_s": -1}})
    assert any("scheduler.wake_room_s: must be a number >= 0" in p for p in probs)


def test_the_starvation_guard_is_configurable_and_reaches_placement() -> None:
    from orchestrator.deployment import derive

    one = {"models": [{"name": "m", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]}]}
    dflt = parse_config(one).scheduler
    assert (dflt.starvation_s, dflt.starvation_max_s) == (10.0, 60.0)
    cfg = parse_config({**one, "scheduler": {"starvation_s": 20, "starvation_max_s": 90}})
    params = derive(cfg).placement_params
    assert (params.starvation_s, params.starvation_max_s) == (20.0, 90.0)
    probs = _problems({**one, "scheduler": {"starvation_s": 30, "starvation_max_s": 20}})
    assert any("scheduler.starvation_max_s: must be >= scheduler.starvation_s (30)" in p for p in probs), probs
    probs = _problems({**one, "scheduler": {"starvation_s": -1}})
    assert any("scheduler.starvation_s: must be a number >= 0" in p for p in probs), probs
