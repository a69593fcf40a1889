from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.shapes import ShapeError, list_shapes, load_shape, resolve_shape

# Public parameter counts (model cards): the derivation must land within 1 %.
PUBLISHED_PARAMS = {
    "llama-3.2-1b": 1.236e9,
    "llama-3.2-3b": 3.213e9,
    "llama-3.1-8b": 8.030e9,
    "llama-3.3-70b": 70.55e9,
    "qwen2.5-7b": 7.616e9,
    "qwen2.5-32b": 32.76e9,
}


@pytest.mark.parametrize("name, params", sorted(PUBLISHED_PARAMS.items()))
def test_params_match_published_counts(name: str, params: float) -> None:
    assert abs(load_shape(name).params - params) / params < 0.01


def test_kv_bytes_per_token_of_llama_8b() -> None:
    # 2 (K,V) x 32 layers x 8 KV heads x 128 dims x 2 bytes = 128 KiB
    assert load_shape("llama-3.1-8b").kv_bytes_per_token == 131072


def test_every_shipped_shape_loads() -> None:
    assert "tiny-llama" in list_shapes()
    for name in list_shapes():
        assert load_shape(name).weight_bytes > 0


def test_resolve_by_id_name_and_directory(tmp_path: Path) -> None:
    assert resolve_shape("meta-llama/Llama-3.1-8B-Instruct").name == "llama-3.1-8b"
    assert resolve_shape("qwen2.5-7b").name == "qwen2.5-7b"
    cfg = json.loads((Path(__file__).parents[2] / "orchestrator/shapes/data/tiny-llama/config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert resolve_shape(str(tmp_path)).num_layers == 2
    with pytest.raises(ShapeError, match="cannot tell the size"):
        resolve_shape("org/unknown-model")
