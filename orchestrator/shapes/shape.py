"""Weight and KV sizes derived from a model's ``config.json``.

Counting rule (dense Llama/Qwen2 decoders, bf16): embeddings + per layer (q, k, v, o projections,
gate/up/down MLP, two RMSNorms, q/k/v biases for Qwen2) + final norm + LM head unless tied.
KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes, which is what
SGLang's ``MHATokenToKVPool`` allocates per token slot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

# Public model ids that map onto a shipped shape, so placements can name real models.
KNOWN_MODEL_IDS: dict[str, str] = {
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b",
    "meta-llama/Llama-3.2-3B": "llama-3.2-3b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.3-70B-Instruct": "llama-3.3-70b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b",
    "Qwen/Qwen2.5-32B-Instruct": "qwen2.5-32b",
}


class ShapeError(ValueError):
    """A model path names no shipped shape and no directory with a usable config.json (fatal)."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    dtype_bytes: int
    max_context: int

    @property
    def params(self) -> int:
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.qkv_bias else 0)
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embed + self.num_layers * per_layer + h + head

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def flops_per_token(self) -> int:
        """Forward FLOPs per token, excluding attention over the context (2 x params)."""
        return 2 * self.params

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any]) -> ModelShape:
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            return cls(
                name=name,
                architecture=str(cfg.get("architectures", ["unknown"])[0]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                vocab_size=int(cfg["vocab_size"]),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=cfg.get("model_type") == "qwen2" or bool(cfg.get("attention_bias", False)),
                dtype_bytes=DTYPE_BYTES.get(str(cfg.get("torch_dtype", "bfloat16")), 2),
                max_context=int(cfg.get("max_position_embeddings", 4096)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ShapeError(f"config.json of {name!r} lacks a usable field: {exc}") from exc


def list_shapes() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if (p / "config.json").is_file())


def shape_dir(name: str) -> Path:
    """The shipped directory of a shape (holds config.json; usable as an SGLang model path)."""
    path = DATA_DIR / name
    if not (path / "config.json").is_file():
        raise ShapeError(f"no shipped shape {name!r} (shipped: {', '.join(list_shapes())})")
    return path


@cache
def load_shape(name: str) -> ModelShape:
    with open(shape_dir(name) / "config.json") as f:
        return ModelShape.from_config(name, json.load(f))


def resolve_shape(model_path: str, shape: str | None = None) -> ModelShape:
    """The shape of a model: an explicit shipped shape name, a known public id, or a directory
    holding a config.json (what SGLang itself would read)."""
    if shape is not None:
        return load_shape(shape)
    if model_path in KNOWN_MODEL_IDS:
        return load_shape(KNOWN_MODEL_IDS[model_path])
    if (DATA_DIR / model_path / "config.json").is_file():
        return load_shape(model_path)
    cfg_path = Path(model_path).expanduser() / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ShapeError(f"{cfg_path}: cannot read config.json: {exc}") from exc
        return ModelShape.from_config(Path(model_path).name, cfg)
    raise ShapeError(
        f"cannot tell the size of {model_path!r}: give a directory with a config.json, a known id "
        f"({', '.join(sorted(KNOWN_MODEL_IDS)[:3])}, ...), or `shape:` one of {', '.join(list_shapes())}"
    )
