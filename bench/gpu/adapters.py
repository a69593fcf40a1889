"""``python -m bench.gpu.adapters``: write LoRA adapters for a shape in PEFT's layout, so that a
GPU run loads real adapter files (``POST /load_lora_adapter``) instead of names.

Each ``<out>/a<i>`` holds ``adapter_config.json`` (``peft_type: LORA``, rank ``--rank`` on
``q_proj`` and ``v_proj``) and ``adapter_model.safetensors`` with PEFT's tensor names
(``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight``, ``[r, in]``; ``lora_B``,
``[out, r]``), bf16, random normal x ``--scale``. ``--distinct`` payloads (seeds 0..distinct-1)
are written; adapter ``a<i>`` carries payload ``i mod distinct`` (which ones share weights is in
``shared.json``). 6.8 MB an adapter at rank 8 on an 8B.

    python -m bench.gpu.adapters --shape llama-3.1-8b --count 500 --out /tmp/adapters
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from orchestrator.shapes import load_shape

TARGETS = ("q_proj", "v_proj")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.adapters", description=__doc__)
    p.add_argument("--shape", default="llama-3.1-8b")
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--distinct", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--scale", type=float, default=0.05)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    shape = load_shape(a.shape)
    dims = {
        "q_proj": (shape.hidden_size, shape.num_heads * shape.head_dim),
        "v_proj": (shape.hidden_size, shape.num_kv_heads * shape.head_dim),
    }
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": a.rank,
        "lora_alpha": 2 * a.rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": list(TARGETS),
        "base_model_name_or_path": a.shape,
    }
    done = a.out / "shared.json"
    if done.exists() and json.loads(done.read_text()).get("count") == a.count:
        print(f"{a.out}: {a.count} adapters there already")
        return 0
    import torch
    from safetensors.torch import save_file

    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    for k in range(min(a.distinct, a.count)):
        gen = torch.Generator().manual_seed(k)
        tensors = {}
        for n in range(shape.num_layers):
            for t in TARGETS:
                d_in, d_out = dims[t]
                name = f"base_model.model.model.layers.{n}.self_attn.{t}"
                tensors[f"{name}.lora_A.weight"] = (torch.randn(a.rank, d_in, generator=gen) * a.scale).bfloat16()
                tensors[f"{name}.lora_B.weight"] = (torch.randn(d_out, a.rank, generator=gen) * a.scale).bfloat16()
        first = a.out / f"a{k}"
        first.mkdir(exist_ok=True)
        save_file(tensors, str(first / "adapter_model.safetensors"), metadata={"format": "pt"})
        (first / "adapter_config.json").write_text(json.dumps(config, indent=1))
        for i in range(k + a.distinct, a.count, a.distinct):
            d = a.out / f"a{i}"
            d.mkdir(exist_ok=True)
            shutil.copy(first / "adapter_model.safetensors", d / "adapter_model.safetensors")
            (d / "adapter_config.json").write_text(json.dumps(config, indent=1))
    shared = {f"payload-{k}": [f"a{i}" for i in range(k, a.count, a.distinct)] for k in range(a.distinct)}
    done.write_text(json.dumps({"count": a.count, "shared": shared}))
    print(f"{a.out}: {a.count} adapters ({a.distinct} distinct) in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
