"""``python -m bench.gpu.checkpoints``: write same-shape checkpoints of the real size on local disk,
so that a re-target reads real safetensors files (disk or page cache), not
``--load-format dummy``.

Each ``<out>/ft-<i>`` holds the shape's config.json, a local tokenizer
(orchestrator/shapes/materialize.py), and bf16 weights in safetensors shards of at most
``--shard-gb`` with ``model.safetensors.index.json``, named as Hugging Face's Llama checkpoints
(``model.layers.N.self_attn.q_proj.weight``, ...). Values are random normal × 0.02 from seed
``i``: distinct checkpoints give distinct outputs, so a wrong switch shows in the probe.
``--config-only`` writes no weights (the sim engine reads only config.json).

    python -m bench.gpu.checkpoints --shape llama-3.1-8b --count 2 --out /tmp/ckpt
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.shapes import ModelShape, load_shape, shape_dir

GIB = 1 << 30


def tensors(shape: ModelShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, size) of every weight of a Llama-architecture checkpoint, in file order."""
    if shape.architecture not in ("LlamaForCausalLM", "MistralForCausalLM"):
        raise SystemExit(f"{shape.name}: only Llama-architecture checkpoints are generated (got {shape.architecture})")
    h, q, kv, i = (
        shape.hidden_size,
        shape.num_heads * shape.head_dim,
        shape.num_kv_heads * shape.head_dim,
        shape.intermediate_size,
    )
    yield "model.embed_tokens.weight", (shape.vocab_size, h)
    for n in range(shape.num_layers):
        p = f"model.layers.{n}"
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (q, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, q)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.mlp.gate_proj.weight", (i, h)
        yield f"{p}.mlp.up_proj.weight", (i, h)
        yield f"{p}.mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)
    if not shape.tie_word_embeddings:
        yield "lm_head.weight", (shape.vocab_size, h)


def write_checkpoint(shape: ModelShape, dest: Path, seed: int, shard_bytes: int, config_only: bool) -> int:
    """Returns the weight bytes written."""
    dest.mkdir(parents=True, exist_ok=True)
    if config_only:
        shutil.copy(shape_dir(shape.name) / "config.json", dest / "config.json")
        return 0
    from orchestrator.shapes.materialize import dummy_model_dir

    for f in dummy_model_dir(shape.name).iterdir():  # config.json, tokenizer, generation_config
        if f.is_file():
            shutil.copy(f, dest / f.name)
    import torch
    from safetensors.torch import save_file

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    shard: dict[str, torch.Tensor] = {}
    shard_size, shards, weight_map, total = 0, 0, {}, 0

    def flush() -> None:
        nonlocal shard, shard_size, shards
        if shard:
            shards += 1
            save_file(shard, str(dest / f"model-{shards:05d}.safetensors"), metadata={"format": "pt"})
            shard, shard_size = {}, 0

    for name, size in tensors(shape):
        if name.endswith("norm.weight"):
            t = torch.ones(size, dtype=torch.bfloat16)
        else:
            t = (torch.randn(size, generator=gen, device=device, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()
        nbytes = t.numel() * 2
        if shard and shard_size + nbytes > shard_bytes:
            flush()
        shard[name] = t
        shard_size += nbytes
        total += nbytes
        weight_map[name] = f"model-{shards + 1:05d}.safetensors"
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.checkpoints", description=__doc__)
    p.add_argument("--shape", default="llama-3.1-8b")
    p.add_argument("--count", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shard-gb", type=float, default=4.0)
    p.add_argument("--config-only", action="store_true")
    a = p.parse_args(argv)
    shape = load_shape(a.shape)
    for i in range(a.count):
        dest = a.out / f"ft-{i}"
        if (dest / "model.safetensors.index.json").is_file() or (a.config_only and (dest / "config.json").is_file()):
            print(f"{dest}: already there", flush=True)
            continue
        t0 = time.monotonic()
        n = write_checkpoint(shape, dest, seed=i, shard_bytes=int(a.shard_gb * GIB), config_only=a.config_only)
        print(f"{dest}: {n / GIB:.1f} GiB in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
